//! `cellbench serve`: an HTTP endpoint. `POST /predict` with an image as the body returns the
//! probabilities as JSON; `GET /health` says what model is served.

use std::io::Read as _;

use super::Classifier;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: u64 = 20 * 1024 * 1024;

/// A response: status code and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply {
        status,
        body: serde_json::json!({ "error": message.into() }),
    }
}

/// Answers one request. Pure apart from running the model, so it is testable without sockets.
pub fn handle(
    classifier: &Classifier,
    method: &str,
    url: &str,
    body: Result<Vec<u8>, Reply>,
) -> Reply {
    let path = url.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/health") => Reply {
            status: 200,
            body: serde_json::json!({
                "status": "ok",
                "mode": classifier.info.mode,
                "task": classifier.info.task,
                "labels": classifier.info.labels,
                "input_size": classifier.info.preprocess.size,
            }),
        },
        ("POST", "/predict") => {
            let bytes = match body {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            if bytes.is_empty() {
                return error(400, "empty body: POST the image file as the request body");
            }
            match crate::dataset::image_io::decode_bytes(&bytes) {
                Ok(img) => {
                    let probs = classifier.classify(&img);
                    let map: serde_json::Map<String, serde_json::Value> = classifier
                        .info
                        .labels
                        .iter()
                        .zip(&probs)
                        .map(|(l, p)| (l.clone(), serde_json::json!(p)))
                        .collect();
                    Reply {
                        status: 200,
                        body: serde_json::json!({
                            "predicted": classifier.predicted(&probs),
                            "probabilities": map,
                        }),
                    }
                }
                Err(e) => error(400, format!("not a readable image: {e}")),
            }
        }
        (_, "/health" | "/predict") => error(405, format!("method {method} not allowed on {path}")),
        _ => error(
            404,
            format!("no route {path} (try GET /health or POST /predict)"),
        ),
    }
}

/// Serves until the process is stopped. Requests are answered one at a time on this thread,
/// which owns the model.
pub fn serve(classifier: &Classifier, addr: &str) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    eprintln!(
        "serving {} ({:?}, labels {}) on http://{addr}  —  POST /predict, GET /health",
        classifier.info.mode_name(),
        classifier.info.task,
        classifier.info.labels.join(", ")
    );
    for mut request in server.incoming_requests() {
        let method = request.method().as_str().to_owned();
        let url = request.url().to_owned();
        let body = read_body(&mut request);
        let reply = handle(classifier, &method, &url, body);
        log::info!("{method} {url} -> {}", reply.status);
        let response = tiny_http::Response::from_string(reply.body.to_string())
            .with_status_code(reply.status)
            .with_header(
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                    .expect("static header"),
            );
        request.respond(response).ok();
    }
    Ok(())
}

fn read_body(request: &mut tiny_http::Request) -> Result<Vec<u8>, Reply> {
    if request
        .body_length()
        .is_some_and(|n| n as u64 > MAX_BODY_BYTES)
    {
        return Err(error(
            413,
            format!("body larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let mut bytes = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(400, format!("could not read the body: {e}")))?;
    if bytes.len() as u64 > MAX_BODY_BYTES {
        return Err(error(
            413,
            format!("body larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}
