//! WebSocket pass-through: once both sides have switched protocols, bytes are copied both
//! ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Joins the client's and the upstream's upgraded connections in a task of their own.
pub(crate) fn join(client: OnUpgrade, upstream: OnUpgrade, name: Box<str>) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(upstream = %name, %error, "WebSocket upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(upstream = %name, bytes_up = up, bytes_down = down, "WebSocket closed");
            }
            Err(error) => tracing::debug!(upstream = %name, %error, "WebSocket ended"),
        }
    });
}
