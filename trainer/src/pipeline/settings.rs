//! A run's settings: the defaults chosen from the data, then a settings file over them, then single settings
//! (the command line's flags) over both; each setting the data decided keeps its reason, or says what replaced it.

use std::path::{Path, PathBuf};

use crate::adapt::{Choice, DataShape, adapted_config};
use crate::train::TrainConfig;

/// What overrides the defaults chosen from the data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// A JSON file of any subset of [`TrainConfig`]'s fields (objects merged field by field).
    pub file: Option<PathBuf>,
    /// Single settings over the file's, as a JSON object of [`TrainConfig`]'s fields.
    pub overrides: serde_json::Map<String, serde_json::Value>,
}

/// Why the settings could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {source}")]
    NotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is not a training configuration (a JSON object)")]
    NotAnObject { path: PathBuf },
    #[error("{origin} is not a training configuration: {source}")]
    Invalid {
        origin: String,
        source: serde_json::Error,
    },
}

impl Settings {
    /// The effective configuration for data of `shape`, with the reason for each setting the data decides.
    pub fn resolve(&self, shape: &DataShape) -> Result<(TrainConfig, Vec<Choice>), SettingsError> {
        let (adapted, mut choices) = adapted_config(shape);
        let adapted = serde_json::to_value(&adapted).expect("a configuration serialises");
        let mut value = adapted.clone();
        if let Some(path) = &self.file {
            merge(&mut value, read_object(path)?);
        }
        merge(
            &mut value,
            serde_json::Value::Object(self.overrides.clone()),
        );
        let config: TrainConfig =
            serde_json::from_value(value).map_err(|source| SettingsError::Invalid {
                origin: match &self.file {
                    Some(path) => format!("{} with the flags over it", path.display()),
                    None => "the defaults with the flags over them".to_string(),
                },
                source,
            })?;
        let effective = serde_json::to_value(&config).expect("a configuration serialises");
        for choice in &mut choices {
            let pointer = format!("/{}", choice.setting.replace('.', "/"));
            // Compared as serialised, where a float32 setting reads the same on both sides.
            if let Some(set) = effective
                .pointer(&pointer)
                .filter(|v| Some(*v) != adapted.pointer(&pointer))
            {
                choice.reason = format!(
                    "set by --config or a flag (the data's rule gave {}: {})",
                    choice.value, choice.reason
                );
                choice.value = set.clone();
            }
        }
        Ok((config, choices))
    }
}

fn read_object(path: &Path) -> Result<serde_json::Value, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| SettingsError::NotJson {
            path: path.to_path_buf(),
            source,
        })?;
    if !value.is_object() {
        return Err(SettingsError::NotAnObject {
            path: path.to_path_buf(),
        });
    }
    Ok(value)
}

/// `over`'s fields over `base`'s, objects merged field by field (a file may set one field of `optimiser`).
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> DataShape {
        DataShape {
            users: 1000,
            items: 2000,
            targets: 20_000,
            long_history: 30,
        }
    }

    fn overrides(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().expect("an object").clone()
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_data() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("settings.json");
        std::fs::write(
            &file,
            r#"{"dim": 32, "learning_rate": 0.003, "optimiser": {"beta2": 0.99}}"#,
        )
        .expect("writes");
        let (adapted, _) = adapted_config(&shape());
        let (config, choices) = Settings {
            file: Some(file),
            overrides: overrides(serde_json::json!({"learning_rate": 0.004})),
        }
        .resolve(&shape())
        .expect("resolves");
        assert_eq!(config.dim, 32);
        assert_eq!(config.learning_rate, 0.004);
        assert_eq!(config.optimiser.beta2, 0.99);
        // A field of `optimiser` the file left alone keeps its default.
        assert_eq!(config.optimiser.beta1, adapted.optimiser.beta1);
        let dim = choices
            .iter()
            .find(|c| c.setting == "dim")
            .expect("dim is chosen");
        assert_eq!(dim.value, serde_json::json!(32));
        assert!(
            dim.reason
                .starts_with("set by --config or a flag (the data's rule gave 64"),
            "{}",
            dim.reason
        );
        let dropout = choices
            .iter()
            .find(|c| c.setting == "dropout")
            .expect("dropout is chosen");
        assert!(!dropout.reason.starts_with("set by"), "{}", dropout.reason);
    }

    #[test]
    fn a_file_that_is_not_a_configuration_is_refused_by_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            (
                "list.json",
                "[1, 2]",
                "is not a training configuration (a JSON object)",
            ),
            ("broken.json", "{\"dim\": ", "is not JSON"),
            (
                "typed.json",
                "{\"dim\": \"large\"}",
                "is not a training configuration:",
            ),
        ];
        for (name, text, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("writes");
            let error = Settings {
                file: Some(path),
                ..Settings::default()
            }
            .resolve(&shape())
            .expect_err("refused");
            let message = error.to_string();
            assert!(
                message.contains(name) && message.contains(expected),
                "{name}: {message}"
            );
        }
        let missing = Settings {
            file: Some(dir.path().join("absent.json")),
            ..Settings::default()
        }
        .resolve(&shape())
        .expect_err("refused");
        assert!(matches!(missing, SettingsError::Read { .. }), "{missing}");
    }
}
