use std::collections::HashMap;

/// Longest external item id accepted anywhere; longer ids are never in a vocabulary.
pub const MAX_ITEM_ID_LEN: usize = 256;

/// The mapping between external item ids and model indices.
///
/// Model index 0 is padding; the item at position `i` of the list has model index `i + 1`.
#[derive(Debug, Clone)]
pub struct ItemVocabulary {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

/// A vocabulary that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VocabError {
    #[error("the item vocabulary is empty")]
    Empty,
    #[error("item id at position {position} is empty or longer than {MAX_ITEM_ID_LEN} bytes")]
    BadId { position: usize },
    #[error("item id `{id}` appears twice in the vocabulary")]
    Duplicate { id: String },
    #[error("the vocabulary has {len} items, more than a u32 model index can address")]
    TooLarge { len: usize },
}

impl ItemVocabulary {
    pub fn new(ids: Vec<String>) -> Result<Self, VocabError> {
        if ids.is_empty() {
            return Err(VocabError::Empty);
        }
        if ids.len() >= u32::MAX as usize {
            return Err(VocabError::TooLarge { len: ids.len() });
        }
        let mut index = HashMap::with_capacity(ids.len());
        for (position, id) in ids.iter().enumerate() {
            if id.is_empty() || id.len() > MAX_ITEM_ID_LEN {
                return Err(VocabError::BadId { position });
            }
            let model_index =
                u32::try_from(position + 1).map_err(|_| VocabError::TooLarge { len: ids.len() })?;
            if index.insert(id.clone(), model_index).is_some() {
                return Err(VocabError::Duplicate { id: id.clone() });
            }
        }
        Ok(Self { ids, index })
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
    pub fn id_of(&self, model_index: u32) -> Option<&str> {
        let position = (model_index as usize).checked_sub(1)?;
        self.ids.get(position).map(String::as_str)
    }

    pub fn ids(&self) -> &[String] {
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
        assert_eq!(v.id_of(2), Some("b"));
        assert_eq!(v.id_of(4), None);
    }

    #[test]
    fn rejects_bad_vocabularies() {
        assert_eq!(vocab(&[]).err(), Some(VocabError::Empty));
        assert_eq!(
            vocab(&["a", ""]).err(),
            Some(VocabError::BadId { position: 1 })
        );
        assert_eq!(
            vocab(&["a", "b", "a"]).err(),
            Some(VocabError::Duplicate { id: "a".into() })
        );
        let long = "x".repeat(MAX_ITEM_ID_LEN + 1);
        assert_eq!(
            vocab(&[long.as_str()]).err(),
            Some(VocabError::BadId { position: 0 })
        );
    }
}
