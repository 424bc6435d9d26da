use std::collections::HashMap;

use crate::id::{IdError, ItemId};

/// The mapping between external item ids and model indices.
///
/// Model index 0 is padding; the item at position `i` of the list has model index `i + 1`.
#[derive(Debug, Clone)]
pub struct ItemVocabulary {
    ids: Vec<ItemId>,
    index: HashMap<ItemId, u32>,
}

/// A vocabulary that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VocabError {
    #[error("the item vocabulary is empty")]
    Empty,
    #[error("the vocabulary's entry at position {position}: {reason}")]
    BadId { position: usize, reason: IdError },
    #[error("item id `{id}` appears twice in the vocabulary")]
    Duplicate { id: String },
    #[error("the vocabulary has {len} items, more than a u32 model index can address")]
    TooLarge { len: usize },
}

impl ItemVocabulary {
    /// The vocabulary of `ids` (a bundle's item list, in model order), each parsed as an item id.
    pub fn new(ids: Vec<String>) -> Result<Self, VocabError> {
        if ids.is_empty() {
            return Err(VocabError::Empty);
        }
        if ids.len() >= u32::MAX as usize {
            return Err(VocabError::TooLarge { len: ids.len() });
        }
        let len = ids.len();
        let mut index = HashMap::with_capacity(len);
        let mut parsed = Vec::with_capacity(len);
        for (position, id) in ids.into_iter().enumerate() {
            let id = ItemId::parse(id).map_err(|reason| VocabError::BadId { position, reason })?;
            let model_index =
                u32::try_from(position + 1).map_err(|_| VocabError::TooLarge { len })?;
            if index.insert(id.clone(), model_index).is_some() {
                return Err(VocabError::Duplicate {
                    id: id.into_string(),
                });
            }
            parsed.push(id);
        }
        Ok(Self { ids: parsed, index })
    }

    /// Number of real items (padding excluded).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The model index of an external id, if the model knows the item.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The external id of a model index; `None` for padding and out-of-range indices.
    pub fn id_of(&self, model_index: u32) -> Option<&ItemId> {
        let position = (model_index as usize).checked_sub(1)?;
        self.ids.get(position)
    }

    pub fn ids(&self) -> &[ItemId] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(ids: &[&str]) -> Result<ItemVocabulary, VocabError> {
        ItemVocabulary::new(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn indices_start_at_one_and_round_trip() {
        let v = vocab(&["a", "b", "c"]).expect("valid vocabulary");
        assert_eq!(v.index_of("a"), Some(1));
        assert_eq!(v.index_of("c"), Some(3));
        assert_eq!(v.index_of("d"), None);
        assert_eq!(v.id_of(0), None);
        assert_eq!(v.id_of(2).map(ItemId::as_str), Some("b"));
        assert_eq!(v.id_of(4), None);
    }

    #[test]
    fn rejects_bad_vocabularies() {
        assert_eq!(vocab(&[]).err(), Some(VocabError::Empty));
        assert_eq!(
            vocab(&["a", ""]).err(),
            Some(VocabError::BadId {
                position: 1,
                reason: IdError::Empty { kind: "item id" }
            })
        );
        assert_eq!(
            vocab(&["a", "b", "a"]).err(),
            Some(VocabError::Duplicate { id: "a".into() })
        );
        let long = "x".repeat(crate::id::MAX_ID_BYTES + 1);
        assert!(matches!(
            vocab(&[long.as_str()]).err(),
            Some(VocabError::BadId {
                position: 0,
                reason: IdError::TooLong { .. }
            })
        ));
        // The rule every endpoint applies to item ids: no control characters either.
        assert!(matches!(
            vocab(&["a", "b\tc"]).err(),
            Some(VocabError::BadId {
                position: 1,
                reason: IdError::ControlCharacter { .. }
            })
        ));
    }
}
