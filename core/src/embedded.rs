//! A deployment embedded in a worker: one surface's plan (revision, salt, variants and their weights, which are
//! revoked) and the bundles of the variants that serve, in one payload.
//!
//! `edgerec worker build` writes it after verifying the plan's signature and every bundle's digests against the
//! registry; the worker reads it once, when the build initialises it, and keeps the loaded models in its memory
//! image. Format: the magic `EDGERWKR`, then length-prefixed frames (`u64` little-endian length, bytes): the
//! [`EmbeddedPlan`] as JSON, then each serving variant's `manifest.json` and `model.onnx`, in plan order.

use serde::{Deserialize, Serialize};

use crate::serving::RecommendLimits;
use crate::{ModelName, Surface, VariantName, Version};

const MAGIC: &[u8; 8] = b"EDGERWKR";

/// The plan as the worker serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedPlan {
    pub surface: Surface,
    pub revision: u64,
    /// The plan's A/B salt: the worker assigns visitors to variants as nodes do.
    pub salt: String,
    pub variants: Vec<EmbeddedVariant>,
    /// The registry's key that signed the plan (its id), for the record.
    pub key_id: String,
    /// Where `POST /v1/events` is forwarded (an edge node or collector), if anywhere.
    #[serde(default)]
    pub events_to: Option<String>,
    #[serde(default)]
    pub limits: RecommendLimits,
    /// Bytes of a `/v1/recommend` body.
    pub max_recommend_bytes: usize,
    /// Bytes of a `/v1/events` body.
    pub max_events_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedVariant {
    pub name: VariantName,
    pub weight: u32,
    pub model: ModelName,
    pub version: Version,
    /// A revoked version is not embedded: its visitors go to the other variants by weight.
    pub revoked: bool,
}

/// One serving variant's bundle files.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedBundle {
    pub manifest: Vec<u8>,
    pub model: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbeddedError {
    #[error("the payload does not start with the embedded deployment's magic bytes")]
    Magic,
    #[error("the payload ends inside a frame")]
    Truncated,
    #[error("the embedded plan does not parse: {0}")]
    Plan(String),
    #[error("the payload holds {found} bundle files, the plan's serving variants need {expected}")]
    Bundles { expected: usize, found: usize },
}

/// Writes the payload: the plan, then the bundles of its serving variants in plan order.
pub fn encode(plan: &EmbeddedPlan, bundles: &[EmbeddedBundle]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let mut frame = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    frame(&serde_json::to_vec(plan).expect("a plan serialises"));
    for bundle in bundles {
        frame(&bundle.manifest);
        frame(&bundle.model);
    }
    out
}

/// Reads a payload written by [`encode`].
pub fn decode(payload: &[u8]) -> Result<(EmbeddedPlan, Vec<EmbeddedBundle>), EmbeddedError> {
    let mut rest = payload.strip_prefix(MAGIC).ok_or(EmbeddedError::Magic)?;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(8).ok_or(EmbeddedError::Truncated)?;
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let len = usize::try_from(len).map_err(|_| EmbeddedError::Truncated)?;
        let (frame, tail) = tail.split_at_checked(len).ok_or(EmbeddedError::Truncated)?;
        frames.push(frame);
        rest = tail;
    }
    let (plan, files) = frames.split_first().ok_or(EmbeddedError::Truncated)?;
    let plan: EmbeddedPlan =
        serde_json::from_slice(plan).map_err(|e| EmbeddedError::Plan(e.to_string()))?;
    let expected = 2 * plan.variants.iter().filter(|v| !v.revoked).count();
    if files.len() != expected {
        return Err(EmbeddedError::Bundles {
            expected,
            found: files.len(),
        });
    }
    let bundles = files
        .chunks(2)
        .map(|pair| EmbeddedBundle {
            manifest: pair[0].to_vec(),
            model: pair[1].to_vec(),
        })
        .collect();
    Ok((plan, bundles))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(revoked: bool) -> EmbeddedPlan {
        EmbeddedPlan {
            surface: Surface::parse("home").expect("surface"),
            revision: 3,
            salt: "s".into(),
            variants: vec![EmbeddedVariant {
                name: VariantName::parse("control").expect("name"),
                weight: 100,
                model: ModelName::parse("m").expect("model"),
                version: Version::parse("1.0.0").expect("version"),
                revoked,
            }],
            key_id: "0123456789abcdef".into(),
            events_to: None,
            limits: RecommendLimits::default(),
            max_recommend_bytes: 1 << 18,
            max_events_bytes: 1 << 21,
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let bundle = EmbeddedBundle {
            manifest: b"{}".to_vec(),
            model: vec![1, 2, 3],
        };
        let payload = encode(&plan(false), std::slice::from_ref(&bundle));
        assert_eq!(decode(&payload), Ok((plan(false), vec![bundle.clone()])));
        assert_eq!(
            decode(&payload[..payload.len() - 1]),
            Err(EmbeddedError::Truncated)
        );
        assert_eq!(decode(b"not a payload"), Err(EmbeddedError::Magic));
        let revoked = encode(&plan(true), &[bundle]);
        assert_eq!(
            decode(&revoked),
            Err(EmbeddedError::Bundles {
                expected: 0,
                found: 2
            })
        );
    }
}
