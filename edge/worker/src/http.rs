//! The `wasi:http/proxy` glue: routes, bodies read within their limits, answers written, events forwarded; and
//! `wizer-initialize`, which `edgerec worker build` calls once with the embedded deployment on stdin so that the
//! loaded models are part of the component's memory image (a host that instantiates it per request, as CDNs do,
//! pays for no model loading).

use std::sync::Mutex;

use edgerec_core::RequestId;
use edgerec_core::worker::{Answer, Worker};
use wasip2::exports::http::incoming_handler::Guest as IncomingHandler;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// Set once by `wizer-initialize`, then read from the snapshot.
static WORKER: Mutex<Option<Worker>> = Mutex::new(None);

/// Bytes per write: `blocking-write-and-flush` takes at most 4,096 at a time.
const WRITE_CHUNK: usize = 4096;

mod init {
    wit_bindgen::generate!({
        inline: "package edgerec:worker@0.1.0; world init { export wizer-initialize: func(); }",
    });

    pub(super) struct Init;

    impl Guest for Init {
        fn wizer_initialize() {
            super::initialise();
        }
    }

    export!(Init);
}

/// Reads the embedded deployment from stdin and loads it; a payload that does not load stops the build (a
/// panic: its message goes to stderr and the host sees a trap).
fn initialise() {
    let stdin = wasip2::cli::stdin::get_stdin();
    let payload = read_all(&stdin, usize::MAX).unwrap_or_else(|e| panic!("reading stdin: {e}"));
    drop(stdin);
    let worker = Worker::load(&payload).unwrap_or_else(|e| panic!("{e}"));
    *WORKER.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker);
}

struct Handler;

impl IncomingHandler for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let answer = route(&request);
        respond(out, answer);
    }
}

wasip2::http::proxy::export!(Handler);

fn route(request: &IncomingRequest) -> Answer {
    let guard = WORKER.lock().unwrap_or_else(|p| p.into_inner());
    let Some(worker) = guard.as_ref() else {
        return Answer::error(
            503,
            "not_ready",
            "this worker has no deployment: make a deployable one with `edgerec worker build`",
        );
    };
    let path = request.path_with_query().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    match (request.method(), path) {
        (Method::Get, "/healthz") => worker.health(),
        (Method::Post, "/v1/recommend") => {
            let limit = worker.plan().max_recommend_bytes;
            match read_body(request, limit) {
                Ok(body) => worker.recommend(&body, request_id()),
                Err(refusal) => refusal,
            }
        }
        (Method::Post, "/v1/events") => match worker.plan().events_to.clone() {
            Some(target) => {
                let limit = worker.plan().max_events_bytes;
                drop(guard);
                match read_body(request, limit) {
                    Ok(body) => forward_events(request, &target, body),
                    Err(refusal) => refusal,
                }
            }
            None => Answer::error(
                404,
                "not_found",
                "this worker forwards no events (built without --events-to)",
            ),
        },
        (_, "/healthz" | "/v1/recommend" | "/v1/events") => {
            Answer::error(405, "method_not_allowed", "this route takes another method")
        }
        _ => Answer::error(404, "not_found", "no such route"),
    }
}

/// A random request id: the worker keeps no state between requests.
fn request_id() -> RequestId {
    let random = wasip2::random::random::get_random_u64();
    RequestId::parse(format!("worker-{random:016x}")).expect("a valid request id")
}

/// The request's body, refused (413) past `limit` bytes without reading further.
fn read_body(request: &IncomingRequest, limit: usize) -> Result<Vec<u8>, Answer> {
    let unreadable = |what: &str| Answer::error(400, "invalid_body", what);
    let body = request
        .consume()
        .map_err(|()| unreadable("the body was already read"))?;
    let stream = body
        .stream()
        .map_err(|()| unreadable("the body cannot be read"))?;
    let read = read_all(&stream, limit);
    drop(stream);
    drop(IncomingBody::finish(body));
    read.map_err(|e| match e {
        ReadError::TooLarge => Answer::error(
            413,
            "too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        ),
        ReadError::Failed(message) => unreadable(&message),
    })
}

#[derive(Debug)]
enum ReadError {
    TooLarge,
    Failed(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge => f.write_str("past the limit"),
            ReadError::Failed(message) => f.write_str(message),
        }
    }
}

fn read_all(stream: &InputStream, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > limit {
                    return Err(ReadError::TooLarge);
                }
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ReadError::Failed(e.to_debug_string()));
            }
        }
    }
}

fn respond(out: ResponseOutparam, answer: Answer) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(answer.status);
    let body = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        write_all(&stream, &answer.body);
    }
    let _ = OutgoingBody::finish(body, None);
}

fn write_all(stream: &OutputStream, bytes: &[u8]) {
    for chunk in bytes.chunks(WRITE_CHUNK) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
}

/// Sends the events to `target` (an edge node or collector: `http[s]://host[:port][/prefix]`) with the visitor's
/// credentials, and answers what it answered.
fn forward_events(request: &IncomingRequest, target: &str, body: Vec<u8>) -> Answer {
    let unavailable = |why: String| Answer::error(502, "upstream_unavailable", why);
    let (scheme, rest) = match target.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        _ => {
            return unavailable(format!(
                "the events target `{target}` is not an http(s) URL"
            ));
        }
    };
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let headers = Fields::new();
    let incoming = request.headers();
    for name in ["content-type", "authorization", "cookie"] {
        let values = incoming.get(name);
        if !values.is_empty() {
            let _ = headers.set(name, &values);
        }
    }
    let outgoing = OutgoingRequest::new(headers);
    let prefix = prefix.trim_end_matches('/');
    let path = if prefix.is_empty() {
        "/v1/events".to_string()
    } else {
        format!("/{prefix}/v1/events")
    };
    let configured = outgoing.set_method(&Method::Post).is_ok()
        && outgoing.set_scheme(Some(&scheme)).is_ok()
        && outgoing.set_authority(Some(authority)).is_ok()
        && outgoing.set_path_with_query(Some(&path)).is_ok();
    if !configured {
        return unavailable(format!("the events target `{target}` is not a valid URL"));
    }
    let outgoing_body = outgoing.body().expect("a new request has a body");
    if let Ok(stream) = outgoing_body.write() {
        write_all(&stream, &body);
    }
    let _ = OutgoingBody::finish(outgoing_body, None);
    let future = match outgoing_handler::handle(outgoing, None) {
        Ok(future) => future,
        Err(e) => return unavailable(format!("the events target refused the request: {e:?}")),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return unavailable(format!("the events target did not answer: {e:?}")),
        _ => return unavailable("the events target did not answer".into()),
    };
    let status = response.status();
    let answer = response
        .consume()
        .map_err(|()| ReadError::Failed("no body".into()))
        .and_then(|body| {
            let stream = body
                .stream()
                .map_err(|()| ReadError::Failed("no body".into()))?;
            let read = read_all(&stream, 1 << 20);
            drop(stream);
            drop(IncomingBody::finish(body));
            read
        });
    match answer {
        Ok(body) => Answer { status, body },
        Err(e) => unavailable(format!("the events target's answer could not be read: {e}")),
    }
}
