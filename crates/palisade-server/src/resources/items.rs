//! `/api/v1/items`: create, read, list, update, delete.
//!
//! Reads are public; writes need the `items:write` scope. See the [module docs](super).

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use palisade::auth::Principal;
use serde::{Deserialize, Serialize};

use super::{check_if_match, etag, matches_any, new_id, now_millis, rfc3339};
use crate::{
    db::Database,
    error::{ApiError, AppJson, FieldError},
    routes::AppRoutes,
};

/// The scope every write needs.
pub const WRITE_SCOPE: &str = "items:write";
/// The default and the largest page.
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

pub(super) fn routes(routes: AppRoutes, db: &Database) -> AppRoutes {
    routes
        .route(
            "/api/v1/items",
            get(list).post(create).with_state(db.clone()),
        )
        .route(
            "/api/v1/items/{id}",
            get(read)
                .patch(update)
                .delete(delete)
                .with_state(db.clone()),
        )
}

/// A stored item.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ItemRow {
    id: String,
    sku: String,
    name: String,
    description: String,
    price_cents: i64,
    stock: i64,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str =
    "id, sku, name, description, price_cents, stock, version, created_at, updated_at";

/// An item as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Item {
    id: String,
    sku: String,
    name: String,
    description: String,
    price_cents: i64,
    stock: i64,
    version: i64,
    created_at: String,
    updated_at: String,
}

impl From<ItemRow> for Item {
    fn from(r: ItemRow) -> Self {
        Self {
            id: r.id,
            sku: r.sku,
            name: r.name,
            description: r.description,
            price_cents: r.price_cents,
            stock: r.stock,
            version: r.version,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// The body of a create: `sku`, `name` and `price_cents` are required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    sku: Option<String>,
    name: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
    stock: Option<i64>,
}

/// The body of an update: only the fields to change (the SKU never changes).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    name: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
    stock: Option<i64>,
}

/// Field rules, shared by create and update.
fn check_name(errors: &mut Vec<FieldError>, name: &str) {
    let n = name.trim().chars().count();
    if n == 0 || n > 200 {
        errors.push(FieldError::new("name", "must be 1 to 200 characters"));
    } else if name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "must not contain control characters",
        ));
    }
}

fn check_description(errors: &mut Vec<FieldError>, d: &str) {
    if d.chars().count() > 2000 {
        errors.push(FieldError::new(
            "description",
            "must be at most 2000 characters",
        ));
    }
}

fn check_price(errors: &mut Vec<FieldError>, p: i64) {
    if !(0..=100_000_000_000).contains(&p) {
        errors.push(FieldError::new(
            "price_cents",
            "must be between 0 and 100000000000",
        ));
    }
}

fn check_stock(errors: &mut Vec<FieldError>, s: i64) {
    if !(0..=1_000_000_000).contains(&s) {
        errors.push(FieldError::new("stock", "must be between 0 and 1000000000"));
    }
}

fn required<T>(errors: &mut Vec<FieldError>, field: &'static str, v: Option<T>) -> Option<T> {
    if v.is_none() {
        errors.push(FieldError::new(field, "is required"));
    }
    v
}

/// The response for one item: its JSON, `ETag`, and the status.
fn item_response(status: StatusCode, row: ItemRow) -> Response {
    let tag = etag(row.version);
    let location = (status == StatusCode::CREATED)
        .then(|| HeaderValue::try_from(format!("/api/v1/items/{}", row.id)).ok())
        .flatten();
    let mut res = (status, Json(Item::from(row))).into_response();
    res.headers_mut().insert(header::ETAG, tag);
    if let Some(l) = location {
        res.headers_mut().insert(header::LOCATION, l);
    }
    res
}

#[utoipa::path(post, path = "/api/v1/items", tag = "items",
    request_body = NewItem,
    responses(
        (status = 201, description = "Created", body = Item,
            headers(("ETag" = String, description = "The version"), ("Location" = String))),
        (status = 401, description = "No or invalid credentials", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope items:write", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An item with this SKU exists", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each listed in `errors`", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["items:write"]), ("api_key" = ["items:write"])))]
pub(crate) async fn create(
    State(db): State<Database>,
    who: Principal,
    AppJson(body): AppJson<NewItem>,
) -> Result<Response, ApiError> {
    who.require_scopes(&[WRITE_SCOPE])?;
    let mut errors = Vec::new();
    let sku = required(&mut errors, "sku", body.sku);
    if let Some(sku) = &sku
        && (sku.is_empty()
            || sku.len() > 64
            || !sku
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        errors.push(FieldError::new(
            "sku",
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
        ));
    }
    let name = required(&mut errors, "name", body.name);
    if let Some(name) = &name {
        check_name(&mut errors, name);
    }
    let description = body.description.unwrap_or_default();
    check_description(&mut errors, &description);
    let price = required(&mut errors, "price_cents", body.price_cents);
    if let Some(p) = price {
        check_price(&mut errors, p);
    }
    let stock = body.stock.unwrap_or(0);
    check_stock(&mut errors, stock);
    let (Some(sku), Some(name), Some(price), true) = (sku, name, price, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let now = now_millis();
    let row = ItemRow {
        id: new_id(),
        sku,
        name: name.trim().to_owned(),
        description,
        price_cents: price,
        stock,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    sqlx::query(
        "INSERT INTO items (id, sku, name, description, price_cents, stock, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&row.id)
    .bind(&row.sku)
    .bind(&row.name)
    .bind(&row.description)
    .bind(row.price_cents)
    .bind(row.stock)
    .bind(row.version)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(db.pool())
    .await
    .map_err(|e| ApiError::on_constraint(e, "an item with this sku exists"))?;
    Ok(item_response(StatusCode::CREATED, row))
}

async fn fetch(db: &Database, id: &str) -> Result<ItemRow, ApiError> {
    sqlx::query_as::<_, ItemRow>(&format!("SELECT {COLUMNS} FROM items WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .ok_or(ApiError::NotFound)
}

#[utoipa::path(get, path = "/api/v1/items/{id}", tag = "items",
    params(("id" = String, Path, description = "The item id"),
           ("If-None-Match" = Option<String>, Header, description = "ETags the client holds")),
    responses(
        (status = 200, description = "The item", body = Item, headers(("ETag" = String))),
        (status = 304, description = "Not modified: the client's ETag is current"),
        (status = 404, description = "No such item", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn read(
    State(db): State<Database>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = fetch(&db, &id).await?;
    let tag = etag(row.version);
    if let Some(list) = headers.get(header::IF_NONE_MATCH)
        && matches_any(list, &tag, true)
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, tag);
        return Ok(res);
    }
    Ok(item_response(StatusCode::OK, row))
}

/// `?limit=` (1–100, default 20) and `?cursor=` (the last id of the previous page).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1–100 (default 20).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// The `next` link's cursor: the last id of the previous page.
    cursor: Option<String>,
}

/// A page of items and the link to the next one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    items: Vec<Item>,
    /// The next page, absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/items", tag = "items",
    params(ListParams),
    responses(
        (status = 200, description = "A page, in creation order", body = Page,
            headers(("Link" = String, description = "`<next>; rel=\"next\"` when there is a next page"))),
        (status = 422, description = "Invalid limit or cursor", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list(
    State(db): State<Database>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let limit = match params.limit.as_deref().map(str::parse::<i64>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            errors.push(FieldError::new(
                "limit",
                "must be a whole number from 1 to 100",
            ));
            DEFAULT_LIMIT
        }
    };
    let cursor = params.cursor.unwrap_or_default();
    if cursor.len() > 64 || !cursor.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        errors.push(FieldError::new(
            "cursor",
            "is not a cursor this API gave out",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // One row more than the page: whether a next page exists, without a count.
    let mut rows = sqlx::query_as::<_, ItemRow>(&format!(
        "SELECT {COLUMNS} FROM items WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(&cursor)
    .bind(limit + 1)
    .fetch_all(db.pool())
    .await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = more
        .then(|| rows.last())
        .flatten()
        .map(|last| format!("/api/v1/items?limit={limit}&cursor={}", last.id));
    let link = next
        .as_ref()
        .and_then(|n| HeaderValue::try_from(format!("<{n}>; rel=\"next\"")).ok());
    let mut res = Json(Page {
        items: rows.into_iter().map(Item::from).collect(),
        next,
    })
    .into_response();
    if let Some(link) = link {
        res.headers_mut().insert(header::LINK, link);
    }
    Ok(res)
}

#[utoipa::path(patch, path = "/api/v1/items/{id}", tag = "items",
    params(("id" = String, Path, description = "The item id"),
           ("If-Match" = Option<String>, Header, description = "Update only this version")),
    request_body = ItemPatch,
    responses(
        (status = 200, description = "The updated item", body = Item, headers(("ETag" = String))),
        (status = 404, description = "No such item", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["items:write"]), ("api_key" = ["items:write"])))]
pub(crate) async fn update(
    State(db): State<Database>,
    Path(id): Path<String>,
    who: Principal,
    headers: HeaderMap,
    AppJson(patch): AppJson<ItemPatch>,
) -> Result<Response, ApiError> {
    who.require_scopes(&[WRITE_SCOPE])?;
    let mut errors = Vec::new();
    if let Some(n) = &patch.name {
        check_name(&mut errors, n);
    }
    if let Some(d) = &patch.description {
        check_description(&mut errors, d);
    }
    if let Some(p) = patch.price_cents {
        check_price(&mut errors, p);
    }
    if let Some(s) = patch.stock {
        check_stock(&mut errors, s);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let current = fetch(&db, &id).await?;
    check_if_match(&headers, current.version)?;
    let row = ItemRow {
        name: patch.name.map_or(current.name, |n| n.trim().to_owned()),
        description: patch.description.unwrap_or(current.description),
        price_cents: patch.price_cents.unwrap_or(current.price_cents),
        stock: patch.stock.unwrap_or(current.stock),
        version: current.version + 1,
        updated_at: now_millis(),
        ..current
    };
    // Optimistic concurrency: the row changes only if nobody changed it since it was read.
    let done = sqlx::query(
        "UPDATE items SET name = $1, description = $2, price_cents = $3, stock = $4, \
         version = $5, updated_at = $6 WHERE id = $7 AND version = $8",
    )
    .bind(&row.name)
    .bind(&row.description)
    .bind(row.price_cents)
    .bind(row.stock)
    .bind(row.version)
    .bind(row.updated_at)
    .bind(&row.id)
    .bind(row.version - 1)
    .execute(db.pool())
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::Conflict(
            "the item changed while it was being updated; read it and try again".into(),
        ));
    }
    Ok(item_response(StatusCode::OK, row))
}

#[utoipa::path(delete, path = "/api/v1/items/{id}", tag = "items",
    params(("id" = String, Path, description = "The item id"),
           ("If-Match" = Option<String>, Header, description = "Delete only this version")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such item", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Orders reference the item", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["items:write"]), ("api_key" = ["items:write"])))]
pub(crate) async fn delete(
    State(db): State<Database>,
    Path(id): Path<String>,
    who: Principal,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    who.require_scopes(&[WRITE_SCOPE])?;
    let current = fetch(&db, &id).await?;
    check_if_match(&headers, current.version)?;
    // Only the version that was checked: a concurrent update makes this delete nothing.
    let done = sqlx::query("DELETE FROM items WHERE id = $1 AND version = $2")
        .bind(&id)
        .bind(current.version)
        .execute(db.pool())
        .await
        .map_err(|e| ApiError::on_constraint(e, "the item has orders and cannot be deleted"))?;
    if done.rows_affected() == 0 {
        return Err(ApiError::Conflict(
            "the item changed while it was being deleted; read it and try again".into(),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
