//! The exported ABI of the WASI ranker.
//!
//! The host copies bytes into buffers it got from [`edgerec_alloc`], calls [`edgerec_load`] or [`edgerec_rank`],
//! and reads the JSON answer at [`edgerec_result_ptr`] / [`edgerec_result_len`]:
//! - status 0: success; `edgerec_load` answers `{"name", "version", "items"}`, `edgerec_rank` a
//!   [`edgerec_core::Ranking`];
//! - status 1: failure; the answer is an [`edgerec_core::ErrorReport`] (`{"kind", "message"}`).
//!
//! The answer stays valid until the next call. Buffers given to the host are returned with [`edgerec_free`].

use std::sync::{Mutex, MutexGuard};

use edgerec_core::{ErrorReport, RankRequest, Ranker, TractScorer, load_tract_ranker};
use serde::Serialize;

/// Version of this ABI, so hosts can refuse a module they do not understand.
pub const ABI_VERSION: u32 = 1;

// Statics rather than thread-locals: a WASI module has one thread, and statics are never torn down.
static RANKER: Mutex<Option<Ranker<TractScorer>>> = Mutex::new(None);
static RESULT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Locks ignoring poison: a panic aborts the module before anyone could see a half-updated value.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a successful load answers.
#[derive(Debug, Serialize)]
pub struct Loaded<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub items: usize,
}

#[unsafe(no_mangle)]
pub extern "C" fn edgerec_abi_version() -> u32 {
    ABI_VERSION
}

/// A buffer of `len` bytes for the host to fill; null if `len` is 0 or memory is exhausted.
#[unsafe(no_mangle)]
pub extern "C" fn edgerec_alloc(len: u32) -> *mut u8 {
    if len == 0 {
        return std::ptr::null_mut();
    }
    let mut buffer: Vec<u8> = Vec::new();
    if buffer.try_reserve_exact(len as usize).is_err() {
        return std::ptr::null_mut();
    }
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr
}

/// Returns a buffer from [`edgerec_alloc`].
///
/// # Safety
/// `ptr` and `len` must come from one call to [`edgerec_alloc`], and the buffer must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn edgerec_free(ptr: *mut u8, len: u32) {
    if !ptr.is_null() && len > 0 {
        // SAFETY: the caller passes back exactly what edgerec_alloc leaked.
        drop(unsafe { Vec::from_raw_parts(ptr, 0, len as usize) });
    }
}

/// Verifies and loads a bundle, replacing the current model only if the new one loads and probes cleanly.
///
/// # Safety
/// Each pointer must address `len` readable bytes (or be null with a length of 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn edgerec_load(
    manifest: *const u8,
    manifest_len: u32,
    model: *const u8,
    model_len: u32,
) -> u32 {
    // SAFETY: forwarded from the caller's contract.
    let (manifest, model) = unsafe { (bytes(manifest, manifest_len), bytes(model, model_len)) };
    answer(load(manifest, model))
}

/// Ranks for one request (a JSON [`RankRequest`]) with the loaded model.
///
/// # Safety
/// `request` must address `len` readable bytes (or be null with a length of 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn edgerec_rank(request: *const u8, len: u32) -> u32 {
    // SAFETY: forwarded from the caller's contract.
    let request = unsafe { bytes(request, len) };
    answer(rank(request))
}

/// Address of the last answer.
#[unsafe(no_mangle)]
pub extern "C" fn edgerec_result_ptr() -> *const u8 {
    lock(&RESULT).as_ptr()
}

/// Length in bytes of the last answer.
#[unsafe(no_mangle)]
pub extern "C" fn edgerec_result_len() -> u32 {
    u32::try_from(lock(&RESULT).len()).unwrap_or(u32::MAX)
}

/// Loads a bundle; the Rust form of [`edgerec_load`].
pub fn load(manifest: &[u8], model: &[u8]) -> Result<Vec<u8>, ErrorReport> {
    let ranker = load_tract_ranker(manifest, model).map_err(|e| ErrorReport::from(&e))?;
    let loaded = Loaded {
        name: ranker.model_name(),
        version: ranker.model_version(),
        items: ranker.vocab().len(),
    };
    let answer = to_json(&loaded)?;
    *lock(&RANKER) = Some(ranker);
    Ok(answer)
}

/// Ranks one JSON request; the Rust form of [`edgerec_rank`].
pub fn rank(request: &[u8]) -> Result<Vec<u8>, ErrorReport> {
    let request: RankRequest = serde_json::from_slice(request)
        .map_err(|e| ErrorReport::new("invalid_request", format!("{e}")))?;
    let mut slot = lock(&RANKER);
    let ranker = slot
        .as_mut()
        .ok_or_else(|| ErrorReport::new("no_model", "no model is loaded"))?;
    let ranking = ranker.rank(&request).map_err(|e| ErrorReport::from(&e))?;
    to_json(&ranking)
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, ErrorReport> {
    serde_json::to_vec(value).map_err(|e| ErrorReport::new("internal", e))
}

fn answer(result: Result<Vec<u8>, ErrorReport>) -> u32 {
    let (status, body) = match result {
        Ok(body) => (0, body),
        // An ErrorReport is two strings: serialising it cannot fail.
        Err(report) => (1, serde_json::to_vec(&report).unwrap_or_default()),
    };
    *lock(&RESULT) = body;
    status
}

/// # Safety
/// `ptr` must address `len` readable bytes, or `len` must be 0.
unsafe fn bytes<'a>(ptr: *const u8, len: u32) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr, len as usize) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> (Vec<u8>, Vec<u8>) {
        let dir = std::path::Path::new(
            &std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"),
        )
        .join("../../testdata/golden/bundle");
        let read = |n: &str| std::fs::read(dir.join(n)).expect("golden bundle is committed");
        (read("manifest.json"), read("model.onnx"))
    }

    fn last_result() -> Vec<u8> {
        lock(&RESULT).clone()
    }

    fn call_rank(request: &str) -> (u32, serde_json::Value) {
        // SAFETY: a live slice.
        let status = unsafe { edgerec_rank(request.as_ptr(), request.len() as u32) };
        (
            status,
            serde_json::from_slice(&last_result()).expect("answers are JSON"),
        )
    }

    #[test]
    fn abi_loads_ranks_and_reports_errors_as_json() {
        let (status, answer) = call_rank(r#"{"k": 3}"#);
        assert_eq!((status, answer["kind"].as_str()), (1, Some("no_model")));

        let (manifest, model) = golden();
        let mut tampered = model.clone();
        tampered[100] ^= 0xff;
        // SAFETY: live slices.
        let status = unsafe {
            edgerec_load(
                manifest.as_ptr(),
                manifest.len() as u32,
                tampered.as_ptr(),
                1000,
            )
        };
        assert_eq!(status, 1);
        let report: ErrorReport = serde_json::from_slice(&last_result()).expect("error report");
        assert_eq!(report.kind, "invalid_bundle");
        assert!(report.message.contains("model.onnx"), "{}", report.message);

        // SAFETY: live slices.
        let status = unsafe {
            edgerec_load(
                manifest.as_ptr(),
                manifest.len() as u32,
                model.as_ptr(),
                model.len() as u32,
            )
        };
        assert_eq!(status, 0, "{}", String::from_utf8_lossy(&last_result()));

        let (status, answer) = call_rank(r#"{"k": 3, "recent_items": ["m1", "m2"]}"#);
        assert_eq!(status, 0, "{answer}");
        assert_eq!(answer["items"].as_array().map(Vec::len), Some(3));

        for (request, kind) in [
            (r#"{"k": 0}"#, "invalid_k"),
            (r#"{"k": 3, "candidates": ["nope"]}"#, "unknown_candidate"),
            (r#"{"k": 3, "context": {"hour": 99}}"#, "invalid_features"),
            (r#"{"k": "three"}"#, "invalid_request"),
            ("not json", "invalid_request"),
        ] {
            let (status, answer) = call_rank(request);
            assert_eq!(
                (status, answer["kind"].as_str()),
                (1, Some(kind)),
                "{request}: {answer}"
            );
        }
    }

    #[test]
    fn alloc_and_free_round_trip() {
        assert!(edgerec_alloc(0).is_null());
        let ptr = edgerec_alloc(64);
        assert!(!ptr.is_null());
        // SAFETY: from edgerec_alloc(64).
        unsafe { edgerec_free(ptr, 64) };
    }
}
