//! `/api/v1/orders`: an order takes stock from an item. Creating one needs the
//! `orders:write` scope and an `Idempotency-Key` (`400` without one): a retried request is
//! answered from the idempotency layer's stored response and never makes a second order. A
//! unique index on (subject, key) guarantees the same in the database. Reading needs
//! `orders:read` and shows only the caller's own orders.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use palisade::{auth::Principal, idempotency::IdempotencyKey};
use serde::{Deserialize, Serialize};

use super::{new_id, now_millis, rfc3339};
use crate::{
    db::Database,
    error::{ApiError, AppJson, FieldError},
    jobs::{Jobs, ProcessOrder},
    routes::AppRoutes,
};

/// The scope creating orders needs.
pub const WRITE_SCOPE: &str = "orders:write";
/// The scope reading orders needs.
pub const READ_SCOPE: &str = "orders:read";

/// What the order handlers share: the database and, when `[jobs]` is on, the queue.
#[derive(Debug, Clone)]
pub(crate) struct OrdersState {
    db: Database,
    jobs: Option<Jobs>,
}

pub(super) fn routes(routes: AppRoutes, db: &Database, jobs: Option<&Jobs>) -> AppRoutes {
    let state = OrdersState {
        db: db.clone(),
        jobs: jobs.cloned(),
    };
    routes
        .route("/api/v1/orders", post(create).with_state(state.clone()))
        .route("/api/v1/orders/{id}", get(read).with_state(state))
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    id: String,
    item_id: String,
    quantity: i64,
    total_cents: i64,
    status: String,
    created_at: i64,
}

/// An order as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Order {
    id: String,
    item_id: String,
    quantity: i64,
    total_cents: i64,
    status: String,
    created_at: String,
}

impl From<OrderRow> for Order {
    fn from(r: OrderRow) -> Self {
        Self {
            id: r.id,
            item_id: r.item_id,
            quantity: r.quantity,
            total_cents: r.total_cents,
            status: r.status,
            created_at: rfc3339(r.created_at),
        }
    }
}

/// The body of an order: both fields required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    item_id: Option<String>,
    quantity: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/orders", tag = "orders",
    params(("Idempotency-Key" = String, Header, description = "Required: a retry with the same key and body is answered from the stored response")),
    request_body = NewOrder,
    responses(
        (status = 201, description = "Accepted", body = Order, headers(("Location" = String))),
        (status = 400, description = "Idempotency-Key missing or malformed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid credentials", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope orders:write", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not enough stock, or this key's first request still runs", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or the key was used with another body", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:write"]), ("api_key" = ["orders:write"])))]
pub(crate) async fn create(
    State(OrdersState { db, jobs }): State<OrdersState>,
    who: Principal,
    key: IdempotencyKey,
    AppJson(body): AppJson<NewOrder>,
) -> Result<Response, ApiError> {
    who.require_scopes(&[WRITE_SCOPE])?;
    let mut errors = Vec::new();
    if body.item_id.as_deref().is_none_or(str::is_empty) {
        errors.push(FieldError::new("item_id", "is required"));
    }
    match body.quantity {
        None => errors.push(FieldError::new("quantity", "is required")),
        Some(q) if !(1..=1000).contains(&q) => {
            errors.push(FieldError::new("quantity", "must be between 1 and 1000"));
        }
        Some(_) => {}
    }
    let (Some(item_id), Some(quantity), true) = (body.item_id, body.quantity, errors.is_empty())
    else {
        return Err(ApiError::Validation(errors));
    };
    let (request_id, correlation_id) = palisade::context::current()
        .map(|c| {
            (
                c.request_id().as_str().to_owned(),
                c.correlation_id().as_str().to_owned(),
            )
        })
        .unwrap_or_default();
    let now = now_millis();
    let mut tx = db.pool().begin().await?;
    // Write first: the transaction takes the write lock at once (SQLite), and the stock check
    // and decrement are one statement (no read-modify-write race).
    let price: Option<i64> = sqlx::query_scalar(
        "UPDATE items SET stock = stock - $1, version = version + 1, updated_at = $2 \
         WHERE id = $3 AND stock >= $4 RETURNING price_cents",
    )
    .bind(quantity)
    .bind(now)
    .bind(&item_id)
    .bind(quantity)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(price) = price else {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM items WHERE id = $1")
            .bind(&item_id)
            .fetch_optional(&mut *tx)
            .await?;
        return Err(match exists {
            None => ApiError::Validation(vec![FieldError::new("item_id", "no such item")]),
            Some(_) => ApiError::Conflict("not enough stock for this quantity".into()),
        });
    };
    let row = OrderRow {
        id: new_id(),
        item_id,
        quantity,
        total_cents: price.saturating_mul(quantity),
        status: "accepted".to_owned(),
        created_at: now,
    };
    let inserted = sqlx::query(
        "INSERT INTO orders (id, item_id, quantity, total_cents, status, subject, request_id, \
         idempotency_key, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&row.id)
    .bind(&row.item_id)
    .bind(row.quantity)
    .bind(row.total_cents)
    .bind(&row.status)
    .bind(who.subject())
    .bind(&request_id)
    .bind(key.as_str())
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        let duplicate = matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation());
        if !duplicate {
            return Err(e.into());
        }
        // The key was used before and the layer's stored response is gone (expired, or the
        // client went away before it was stored): answer with that order, as a replay
        // would, when the request is the same; the stock taken above is rolled back.
        drop(tx);
        return existing_order(&db, who.subject(), key.as_str(), &row).await;
    }
    tx.commit().await?;
    tracing::info!(order_id = %row.id, item_id = %row.item_id, quantity, "order accepted");
    // After the commit: a job never sees an order that was rolled back. If enqueueing fails
    // the order stands (accepted, not processed) and the failure is logged and counted.
    if let Some(jobs) = jobs {
        let job = ProcessOrder {
            order_id: row.id.clone(),
            request_id,
            correlation_id,
            subject: who.subject().to_owned(),
        };
        // On a task of its own (in this request's context): a client that goes away now
        // cannot cancel the enqueue of an order that exists.
        palisade::context::spawn(async move { jobs.enqueue(job).await });
    }
    Ok(created(row))
}

/// The order a client made earlier with `key`: `201` as the first answer was, when `wanted`
/// asks for the same item and quantity; `422` when the key was used for another order.
async fn existing_order(
    db: &Database,
    subject: &str,
    key: &str,
    wanted: &OrderRow,
) -> Result<Response, ApiError> {
    let row = sqlx::query_as::<_, OrderRow>(
        "SELECT id, item_id, quantity, total_cents, status, created_at FROM orders \
         WHERE subject = $1 AND idempotency_key = $2",
    )
    .bind(subject)
    .bind(key)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| ApiError::Conflict("the order is being created; retry shortly".into()))?;
    if row.item_id != wanted.item_id || row.quantity != wanted.quantity {
        return Err(ApiError::Validation(vec![FieldError::new(
            "Idempotency-Key",
            "was already used for another order",
        )]));
    }
    Ok(created(row))
}

fn created(row: OrderRow) -> Response {
    let location = HeaderValue::try_from(format!("/api/v1/orders/{}", row.id)).ok();
    let mut res = (StatusCode::CREATED, Json(Order::from(row))).into_response();
    if let Some(l) = location {
        res.headers_mut().insert(header::LOCATION, l);
    }
    res
}

#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The caller's order", body = Order),
        (status = 404, description = "No such order of the caller's", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"]), ("api_key" = ["orders:read"])))]
pub(crate) async fn read(
    State(OrdersState { db, .. }): State<OrdersState>,
    Path(id): Path<String>,
    who: Principal,
) -> Result<Json<Order>, ApiError> {
    who.require_scopes(&[READ_SCOPE])?;
    let row = sqlx::query_as::<_, OrderRow>(
        "SELECT id, item_id, quantity, total_cents, status, created_at FROM orders \
         WHERE id = $1 AND subject = $2",
    )
    .bind(&id)
    .bind(who.subject())
    .fetch_optional(db.pool())
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(Json(Order::from(row)))
}
