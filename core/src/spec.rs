//! The feature specification: what a model takes, and the one function that builds its inputs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The version of the feature specification schema this build reads and writes.
pub const FEATURE_SPEC_VERSION: u32 = 1;

/// Longest history a specification may ask for.
const MAX_SEQUENCE_LEN: usize = 4096;

/// What a model takes as input and gives as output.
///
/// Model index 0 is padding; real items are `1..=items` (see [`crate::ItemVocabulary`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Schema version ([`FEATURE_SPEC_VERSION`]).
    pub version: u32,
    /// The user's recent items.
    pub sequence: SequenceSpec,
    /// Per-item categorical attributes laid out along the sequence (for example each recent item's genre).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_features: Vec<ItemFeatureSpec>,
    /// Features of the request rather than of an item (for example the hour of day).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<ContextFeatureSpec>,
    pub output: OutputSpec,
}

/// The recent-item sequence: model input `input`, int64 of shape `[1, max_len]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSpec {
    pub input: String,
    /// How many of the most recent items the model sees; older ones are dropped.
    pub max_len: usize,
    pub padding: Padding,
}

/// Where padding goes when the history is shorter than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Padding first, most recent item in the last position.
    Left,
    /// Items first, padding after the most recent item.
    Right,
}

/// A categorical attribute of every item, fed along the sequence as int64 `[1, max_len]` (0 at padding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemFeatureSpec {
    pub name: String,
    pub input: String,
    pub cardinality: u32,
    /// The attribute of each model index (index 0, padding, included).
    pub values: Vec<u32>,
}

/// A feature of the request, fed as a tensor of shape `[1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextFeatureSpec {
    pub name: String,
    pub input: String,
    pub kind: ContextKind,
}

/// How a context feature is encoded. A missing value encodes as 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextKind {
    /// An integer in `0..cardinality`, fed as int64.
    Categorical { cardinality: u32 },
    /// A finite number, fed as float32.
    Numeric,
}

/// The model output: float32 scores of shape `[1, num_items]`, one per model index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    /// Number of model indices scored, padding included (vocabulary size + 1).
    pub num_items: usize,
}

/// A specification that cannot describe a usable model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "feature specification version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("sequence max_len {0} is outside 1..={MAX_SEQUENCE_LEN}")]
    BadSequenceLength(usize),
    #[error("the output scores {declared} model indices but the vocabulary has {vocabulary} items (expected {expected})", expected = vocabulary + 1)]
    OutputSize { declared: usize, vocabulary: usize },
    #[error("item feature `{name}` has {found} values, expected one per model index ({expected})")]
    ItemFeatureLength {
        name: String,
        found: usize,
        expected: usize,
    },
    #[error(
        "item feature `{name}` gives model index {index} the value {value}, outside its cardinality {cardinality}"
    )]
    ItemFeatureValue {
        name: String,
        index: usize,
        value: u32,
        cardinality: u32,
    },
    #[error("feature `{0}` has a cardinality of 0")]
    ZeroCardinality(String),
    #[error("model input `{0}` is named twice in the feature specification")]
    DuplicateInput(String),
    #[error("feature `{0}` is named twice in the feature specification")]
    DuplicateFeature(String),
    #[error("an input or feature name is empty")]
    EmptyName,
}

/// Raw features that do not fit the specification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    #[error("context feature `{0}` is not part of this model's feature specification")]
    UnknownContext(String),
    #[error("context feature `{name}` must be an integer in 0..{cardinality}, got {value}")]
    BadCategorical {
        name: String,
        value: f64,
        cardinality: u32,
    },
    #[error("context feature `{name}` must be a finite number, got {value}")]
    BadNumeric { name: String, value: f64 },
    #[error("model index {index} is outside the {num_items} indices this model scores")]
    IndexOutOfRange { index: u32, num_items: usize },
}

/// Element types of model inputs and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    I64,
    F32,
    /// Any type a feature specification never uses.
    Other,
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ElemType::I64 => "int64",
            ElemType::F32 => "float32",
            ElemType::Other => "of an unsupported element type",
        })
    }
}

/// The data of one input tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    I64(Vec<i64>),
    F32(Vec<f32>),
}

impl TensorData {
    pub fn elem_type(&self) -> ElemType {
        match self {
            TensorData::I64(_) => ElemType::I64,
            TensorData::F32(_) => ElemType::F32,
        }
    }
}

/// One named model input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Every input of one model call, in specification order (sequence, item features, context).
pub type ModelInputs = Vec<InputTensor>;

/// A tensor as a runtime declares it: element type and dimensions where the model fixes them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSignature {
    pub name: String,
    /// `None` when the runtime cannot tell.
    pub elem_type: Option<ElemType>,
    /// `None` when the rank is unknown; a `None` dimension is dynamic.
    pub shape: Option<Vec<Option<usize>>>,
}

/// A model whose declared inputs or outputs do not match its feature specification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("the model has no input `{0}`, which the feature specification feeds")]
    MissingInput(String),
    #[error("the model takes an input `{0}` that the feature specification does not describe")]
    UnexpectedInput(String),
    #[error("model tensor `{name}` is {found}, the feature specification says {expected}")]
    ElemType {
        name: String,
        expected: ElemType,
        found: ElemType,
    },
    #[error("model tensor `{name}` has shape {found}, the feature specification says {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: String,
    },
    #[error("the model has no output `{0}`")]
    MissingOutput(String),
}

impl FeatureSpec {
    /// Checks the specification against itself and the vocabulary size (padding excluded).
    pub fn validate(&self, vocabulary: usize) -> Result<(), SpecError> {
        if self.version != FEATURE_SPEC_VERSION {
            return Err(SpecError::UnsupportedVersion {
                found: self.version,
                supported: FEATURE_SPEC_VERSION,
            });
        }
        if !(1..=MAX_SEQUENCE_LEN).contains(&self.sequence.max_len) {
            return Err(SpecError::BadSequenceLength(self.sequence.max_len));
        }
        if self.output.num_items != vocabulary + 1 {
            return Err(SpecError::OutputSize {
                declared: self.output.num_items,
                vocabulary,
            });
        }
        let mut inputs = BTreeSet::new();
        let mut names = BTreeSet::new();
        for input in self.input_signatures() {
            if input.name.is_empty() {
                return Err(SpecError::EmptyName);
            }
            if !inputs.insert(input.name.clone()) {
                return Err(SpecError::DuplicateInput(input.name));
            }
        }
        let feature_names = self
            .item_features
            .iter()
            .map(|f| &f.name)
            .chain(self.context.iter().map(|c| &c.name));
        for name in feature_names {
            if name.is_empty() {
                return Err(SpecError::EmptyName);
            }
            if !names.insert(name) {
                return Err(SpecError::DuplicateFeature(name.clone()));
            }
        }
        for feature in &self.item_features {
            if feature.cardinality == 0 {
                return Err(SpecError::ZeroCardinality(feature.name.clone()));
            }
            if feature.values.len() != self.output.num_items {
                return Err(SpecError::ItemFeatureLength {
                    name: feature.name.clone(),
                    found: feature.values.len(),
                    expected: self.output.num_items,
                });
            }
            if let Some((index, &value)) = feature
                .values
                .iter()
                .enumerate()
                .find(|(_, v)| **v >= feature.cardinality)
            {
                return Err(SpecError::ItemFeatureValue {
                    name: feature.name.clone(),
                    index,
                    value,
                    cardinality: feature.cardinality,
                });
            }
        }
        for feature in &self.context {
            if feature.kind == (ContextKind::Categorical { cardinality: 0 }) {
                return Err(SpecError::ZeroCardinality(feature.name.clone()));
            }
        }
        Ok(())
    }

    /// The inputs a model must declare, in the order [`FeatureSpec::encode`] produces them.
    pub fn input_signatures(&self) -> Vec<TensorSignature> {
        let sequence_shape = Some(vec![Some(1), Some(self.sequence.max_len)]);
        let mut inputs = vec![TensorSignature {
            name: self.sequence.input.clone(),
            elem_type: Some(ElemType::I64),
            shape: sequence_shape.clone(),
        }];
        inputs.extend(self.item_features.iter().map(|f| TensorSignature {
            name: f.input.clone(),
            elem_type: Some(ElemType::I64),
            shape: sequence_shape.clone(),
        }));
        inputs.extend(self.context.iter().map(|c| TensorSignature {
            name: c.input.clone(),
            elem_type: Some(match c.kind {
                ContextKind::Categorical { .. } => ElemType::I64,
                ContextKind::Numeric => ElemType::F32,
            }),
            shape: Some(vec![Some(1)]),
        }));
        inputs
    }

    /// The output a model must declare.
    pub fn output_signature(&self) -> TensorSignature {
        TensorSignature {
            name: self.output.name.clone(),
            elem_type: Some(ElemType::F32),
            shape: Some(vec![Some(1), Some(self.output.num_items)]),
        }
    }

    /// Checks what a runtime says a model declares against this specification.
    ///
    /// Dimensions the model leaves dynamic are accepted: the runtime fixes them from the specification.
    pub fn check_signature(
        &self,
        model_inputs: &[TensorSignature],
        model_outputs: &[TensorSignature],
    ) -> Result<(), SignatureError> {
        self.check_inputs(model_inputs)?;
        self.check_output(model_outputs)
    }

    /// The input half of [`FeatureSpec::check_signature`], for runtimes that know output shapes only once the
    /// input shapes are fixed.
    pub fn check_inputs(&self, model_inputs: &[TensorSignature]) -> Result<(), SignatureError> {
        let expected_inputs = self.input_signatures();
        for expected in &expected_inputs {
            let found = model_inputs
                .iter()
                .find(|m| m.name == expected.name)
                .ok_or_else(|| SignatureError::MissingInput(expected.name.clone()))?;
            check_tensor(expected, found)?;
        }
        if let Some(extra) = model_inputs
            .iter()
            .find(|m| !expected_inputs.iter().any(|e| e.name == m.name))
        {
            return Err(SignatureError::UnexpectedInput(extra.name.clone()));
        }
        Ok(())
    }

    /// The output half of [`FeatureSpec::check_signature`].
    pub fn check_output(&self, model_outputs: &[TensorSignature]) -> Result<(), SignatureError> {
        let expected = self.output_signature();
        let found = model_outputs
            .iter()
            .find(|m| m.name == expected.name)
            .ok_or_else(|| SignatureError::MissingOutput(expected.name.clone()))?;
        check_tensor(&expected, found)
    }

    /// Turns raw features into model inputs. Every ranker and the trainer call this one function.
    ///
    /// `history` holds model indices in chronological order (oldest first); only the last `max_len` are used.
    /// Context features missing from `context` encode as 0.
    pub fn encode(
        &self,
        history: &[u32],
        context: &BTreeMap<String, f64>,
    ) -> Result<ModelInputs, FeatureError> {
        if let Some(name) = context
            .keys()
            .find(|name| !self.context.iter().any(|c| &c.name == *name))
        {
            return Err(FeatureError::UnknownContext(name.clone()));
        }
        if let Some(&index) = history
            .iter()
            .find(|&&i| i as usize >= self.output.num_items)
        {
            return Err(FeatureError::IndexOutOfRange {
                index,
                num_items: self.output.num_items,
            });
        }
        let max_len = self.sequence.max_len;
        let recent = &history[history.len().saturating_sub(max_len)..];
        let offset = match self.sequence.padding {
            Padding::Left => max_len - recent.len(),
            Padding::Right => 0,
        };
        let lay_out = |value_of: &dyn Fn(u32) -> i64| {
            let mut data = vec![0i64; max_len];
            for (slot, &index) in data[offset..].iter_mut().zip(recent) {
                *slot = value_of(index);
            }
            data
        };

        let mut inputs = Vec::with_capacity(1 + self.item_features.len() + self.context.len());
        inputs.push(InputTensor {
            name: self.sequence.input.clone(),
            shape: vec![1, max_len],
            data: TensorData::I64(lay_out(&|index| i64::from(index))),
        });
        for feature in &self.item_features {
            let values = &feature.values;
            inputs.push(InputTensor {
                name: feature.input.clone(),
                shape: vec![1, max_len],
                data: TensorData::I64(lay_out(&|index| {
                    values.get(index as usize).copied().map_or(0, i64::from)
                })),
            });
        }
        for feature in &self.context {
            let value = context.get(&feature.name).copied();
            let data = match feature.kind {
                ContextKind::Categorical { cardinality } => {
                    let value = value.unwrap_or(0.0);
                    if value.fract() != 0.0 || !(0.0..f64::from(cardinality)).contains(&value) {
                        return Err(FeatureError::BadCategorical {
                            name: feature.name.clone(),
                            value,
                            cardinality,
                        });
                    }
                    // Exact: an integer below a u32 cardinality.
                    TensorData::I64(vec![value as i64])
                }
                ContextKind::Numeric => {
                    let value = value.unwrap_or(0.0);
                    if !value.is_finite() {
                        return Err(FeatureError::BadNumeric {
                            name: feature.name.clone(),
                            value,
                        });
                    }
                    TensorData::F32(vec![value as f32])
                }
            };
            inputs.push(InputTensor {
                name: feature.input.clone(),
                shape: vec![1],
                data,
            });
        }
        Ok(inputs)
    }
}

fn check_tensor(expected: &TensorSignature, found: &TensorSignature) -> Result<(), SignatureError> {
    if let (Some(expected_type), Some(found_type)) = (expected.elem_type, found.elem_type)
        && expected_type != found_type
    {
        return Err(SignatureError::ElemType {
            name: expected.name.clone(),
            expected: expected_type,
            found: found_type,
        });
    }
    let expected_dims: Vec<usize> = expected.shape.iter().flatten().flatten().copied().collect();
    if let Some(found_dims) = &found.shape {
        let compatible = found_dims.len() == expected_dims.len()
            && found_dims
                .iter()
                .zip(&expected_dims)
                .all(|(f, e)| f.is_none_or(|f| f == *e));
        if !compatible {
            let shown: Vec<String> = found_dims
                .iter()
                .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                .collect();
            return Err(SignatureError::Shape {
                name: expected.name.clone(),
                expected: expected_dims,
                found: format!("[{}]", shown.join(", ")),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(max_len: usize, padding: Padding) -> FeatureSpec {
        FeatureSpec {
            version: FEATURE_SPEC_VERSION,
            sequence: SequenceSpec {
                input: "item_ids".into(),
                max_len,
                padding,
            },
            item_features: vec![ItemFeatureSpec {
                name: "genre".into(),
                input: "item_genre".into(),
                cardinality: 4,
                values: vec![0, 1, 2, 3, 1, 2],
            }],
            context: vec![
                ContextFeatureSpec {
                    name: "hour".into(),
                    input: "hour".into(),
                    kind: ContextKind::Categorical { cardinality: 24 },
                },
                ContextFeatureSpec {
                    name: "price".into(),
                    input: "price".into(),
                    kind: ContextKind::Numeric,
                },
            ],
            output: OutputSpec {
                name: "scores".into(),
                num_items: 6,
            },
        }
    }

    fn ctx(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn left_padding_keeps_the_most_recent_items_last() {
        let inputs = spec(4, Padding::Left)
            .encode(&[1, 2, 3, 4, 5], &ctx(&[("hour", 7.0)]))
            .expect("encodes");
        assert_eq!(inputs[0].data, TensorData::I64(vec![2, 3, 4, 5]));
        assert_eq!(inputs[1].data, TensorData::I64(vec![2, 3, 1, 2]));
        assert_eq!(inputs[2].data, TensorData::I64(vec![7]));
        assert_eq!(inputs[3].data, TensorData::F32(vec![0.0]));
        let short = spec(4, Padding::Left)
            .encode(&[5], &ctx(&[]))
            .expect("encodes");
        assert_eq!(short[0].data, TensorData::I64(vec![0, 0, 0, 5]));
        assert_eq!(short[1].data, TensorData::I64(vec![0, 0, 0, 2]));
    }

    #[test]
    fn right_padding_puts_items_first() {
        let inputs = spec(4, Padding::Right)
            .encode(&[3, 5], &ctx(&[("price", 2.5)]))
            .expect("encodes");
        assert_eq!(inputs[0].data, TensorData::I64(vec![3, 5, 0, 0]));
        assert_eq!(inputs[3].data, TensorData::F32(vec![2.5]));
    }

    #[test]
    fn empty_history_is_all_padding() {
        let inputs = spec(3, Padding::Left)
            .encode(&[], &ctx(&[]))
            .expect("cold start encodes");
        assert_eq!(inputs[0].data, TensorData::I64(vec![0, 0, 0]));
        assert_eq!(inputs[0].shape, vec![1, 3]);
    }

    #[test]
    fn rejects_bad_context_and_indices() {
        let s = spec(3, Padding::Left);
        assert_eq!(
            s.encode(&[], &ctx(&[("hours", 1.0)])),
            Err(FeatureError::UnknownContext("hours".into()))
        );
        assert!(matches!(
            s.encode(&[], &ctx(&[("hour", 24.0)])),
            Err(FeatureError::BadCategorical { .. })
        ));
        assert!(matches!(
            s.encode(&[], &ctx(&[("hour", 1.5)])),
            Err(FeatureError::BadCategorical { .. })
        ));
        assert!(matches!(
            s.encode(&[], &ctx(&[("hour", -1.0)])),
            Err(FeatureError::BadCategorical { .. })
        ));
        assert!(matches!(
            s.encode(&[], &ctx(&[("price", f64::NAN)])),
            Err(FeatureError::BadNumeric { .. })
        ));
        assert_eq!(
            s.encode(&[6], &ctx(&[])),
            Err(FeatureError::IndexOutOfRange {
                index: 6,
                num_items: 6
            })
        );
    }

    #[test]
    fn validate_catches_inconsistent_specs() {
        assert_eq!(spec(3, Padding::Left).validate(5), Ok(()));
        assert!(matches!(
            spec(3, Padding::Left).validate(4),
            Err(SpecError::OutputSize { .. })
        ));
        assert_eq!(
            spec(0, Padding::Left).validate(5),
            Err(SpecError::BadSequenceLength(0))
        );
        let mut s = spec(3, Padding::Left);
        s.version = 2;
        assert!(matches!(
            s.validate(5),
            Err(SpecError::UnsupportedVersion { found: 2, .. })
        ));
        let mut s = spec(3, Padding::Left);
        s.item_features[0].values[2] = 9;
        assert!(matches!(
            s.validate(5),
            Err(SpecError::ItemFeatureValue {
                index: 2,
                value: 9,
                ..
            })
        ));
        let mut s = spec(3, Padding::Left);
        s.item_features[0].values.pop();
        assert!(matches!(
            s.validate(5),
            Err(SpecError::ItemFeatureLength { .. })
        ));
        let mut s = spec(3, Padding::Left);
        s.context[1].input = "hour".into();
        assert_eq!(s.validate(5), Err(SpecError::DuplicateInput("hour".into())));
    }

    #[test]
    fn signature_check_names_the_mismatch() {
        let s = spec(3, Padding::Left);
        let inputs = s.input_signatures();
        let output = s.output_signature();
        assert_eq!(
            s.check_signature(&inputs, std::slice::from_ref(&output)),
            Ok(())
        );

        let mut dynamic = inputs.clone();
        dynamic[0].shape = Some(vec![None, Some(3)]);
        assert_eq!(
            s.check_signature(&dynamic, std::slice::from_ref(&output)),
            Ok(())
        );

        let missing = &inputs[1..];
        assert_eq!(
            s.check_signature(missing, std::slice::from_ref(&output)),
            Err(SignatureError::MissingInput("item_ids".into()))
        );
        let mut extra = inputs.clone();
        extra.push(TensorSignature {
            name: "mystery".into(),
            elem_type: None,
            shape: None,
        });
        assert_eq!(
            s.check_signature(&extra, std::slice::from_ref(&output)),
            Err(SignatureError::UnexpectedInput("mystery".into()))
        );
        let mut wrong_type = inputs.clone();
        wrong_type[0].elem_type = Some(ElemType::F32);
        assert!(matches!(
            s.check_signature(&wrong_type, std::slice::from_ref(&output)),
            Err(SignatureError::ElemType { .. })
        ));
        let mut wrong_shape = inputs.clone();
        wrong_shape[0].shape = Some(vec![Some(1), Some(4)]);
        assert!(matches!(
            s.check_signature(&wrong_shape, std::slice::from_ref(&output)),
            Err(SignatureError::Shape { .. })
        ));
        assert_eq!(
            s.check_signature(&inputs, &[]),
            Err(SignatureError::MissingOutput("scores".into()))
        );
    }

    proptest::proptest! {
        #[test]
        fn encoding_keeps_the_last_items_in_order(history in proptest::collection::vec(1u32..6, 0..20), max_len in 1usize..8) {
            let s = spec(max_len, Padding::Left);
            let inputs = s.encode(&history, &BTreeMap::new()).expect("valid indices encode");
            let TensorData::I64(ids) = &inputs[0].data else { panic!("sequence is int64") };
            let kept: Vec<i64> = ids.iter().copied().filter(|&i| i != 0).collect();
            let expected: Vec<i64> = history.iter().rev().take(max_len).rev().map(|&i| i64::from(i)).collect();
            proptest::prop_assert_eq!(kept, expected);
            proptest::prop_assert_eq!(ids.len(), max_len);
        }
    }
}
