//! The scrape endpoint: a minimal HTTP/1.x server that answers `GET /metrics` with the
//! Prometheus text format and closes the connection. Anything else gets 404 (other paths) or
//! 405 (other methods).

use super::sample::sample;
use crate::app::Shared;
use metrics_exporter_prometheus::PrometheusRecorder;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// Time a scraper has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves scrapes until `stop` is cancelled.
pub(super) async fn serve(listener: TcpListener, ctx: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &ctx).await {
                tracing::debug!(error = %e, "metrics: scrape failed");
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    BadMethod,
    Malformed,
}

/// Reads the request line of a head: `GET /metrics HTTP/1.1` (a query string is ignored).
fn parse(head: &[u8]) -> Request {
    let Some(line) = head.split(|&b| b == b'\n').next().and_then(|l| std::str::from_utf8(l).ok()) else {
        return Request::Malformed;
    };
    let mut parts = line.trim_end().split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(v)) if v.starts_with("HTTP/") => {
            let path = target.split('?').next().unwrap_or_default();
            match (method, path) {
                ("GET", "/metrics") => Request::Metrics,
                ("GET", _) => Request::NotFound,
                _ => Request::BadMethod,
            }
        }
        _ => Request::Malformed,
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            break;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

async fn answer(mut stream: TcpStream, ctx: &Shared) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request not sent in time"))??;
    let (status, body) = match parse(&head) {
        Request::Metrics => match ctx.metrics.recorder() {
            Some(rec) => ("200 OK", render(ctx, rec)),
            None => ("503 Service Unavailable", "metrics are not exported\n".to_owned()),
        },
        Request::NotFound => ("404 Not Found", "only /metrics is served\n".to_owned()),
        Request::BadMethod => ("405 Method Not Allowed", "only GET is served\n".to_owned()),
        Request::Malformed => ("400 Bad Request", "not an HTTP request\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Samples the state and renders the registry.
fn render(ctx: &Shared, rec: &PrometheusRecorder) -> String {
    sample(ctx, rec);
    rec.handle().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_selects_the_answer() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Request::Metrics);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::BadMethod);
        assert_eq!(parse(b"hello\r\n"), Request::Malformed);
        assert_eq!(parse(b"\xff\xfe"), Request::Malformed);
    }
}
