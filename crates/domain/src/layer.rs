//! Layers, as Lambda has them: archives of libraries or data a user publishes once, as numbered
//! immutable versions, and attaches to functions, which find them merged at `/opt` (so `python/` is
//! on Python's module path and `nodejs/node_modules` on Node.js's `NODE_PATH`). This module owns the
//! records and the rules for referring to a version (`name:version`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ValidationError;
use crate::function::FunctionName;

/// Layers one function may use, as Lambda allows.
pub const MAX_LAYERS_PER_FUNCTION: usize = 5;
/// Layer versions one user may keep (their bytes also count against the code-bytes quota).
pub const MAX_LAYER_VERSIONS_PER_USER: i64 = 1000;

/// A published layer version.
#[derive(Debug, Clone)]
pub struct LayerRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// 1 for a name's first publication, then one more than the highest published so far.
    pub version: i64,
    pub description: String,
    pub code_sha256: String,
    pub code_size_bytes: i64,
    /// What the archive inflates to: a function's code and its layers together must fit the
    /// unzipped limit.
    pub unzipped_bytes: i64,
    pub created_at: DateTime<Utc>,
}

impl LayerRecord {
    /// How a function holds this version.
    pub fn attached(&self) -> FunctionLayer {
        FunctionLayer {
            id: self.id,
            name: self.name.clone(),
            version: self.version,
            code_sha256: self.code_sha256.clone(),
        }
    }
}

/// A layer version as a function holds it: which one, and the code it mounts. Stored with the
/// function, so that the engine needs no second lookup to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionLayer {
    pub id: Uuid,
    pub name: String,
    pub version: i64,
    pub code_sha256: String,
}

impl FunctionLayer {
    /// `name:version`, as the API shows and takes it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// A reference to one of the user's layer versions: `name:version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub name: String,
    pub version: i64,
}

impl LayerRef {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let err = || {
            ValidationError::new(
                "layers",
                format!("{raw:?} is not a layer version: use name:version, e.g. deps:1"),
            )
        };
        let (name, version) = raw.rsplit_once(':').ok_or_else(err)?;
        let name = FunctionName::parse(name).map_err(|_| err())?.into_inner();
        if version.starts_with('+') || version.starts_with('0') {
            return Err(err());
        }
        let version: i64 = version.parse().map_err(|_| err())?;
        if version < 1 {
            return Err(err());
        }
        Ok(Self { name, version })
    }
}

/// A function's layer references: at most [`MAX_LAYERS_PER_FUNCTION`], each name once (as Lambda
/// refuses two versions of one layer), in the order they are merged.
pub fn parse_layer_refs(raw: &[String]) -> Result<Vec<LayerRef>, ValidationError> {
    if raw.len() > MAX_LAYERS_PER_FUNCTION {
        return Err(ValidationError::new(
            "layers",
            format!("a function may use at most {MAX_LAYERS_PER_FUNCTION} layers"),
        ));
    }
    let refs: Vec<LayerRef> = raw
        .iter()
        .map(|r| LayerRef::parse(r))
        .collect::<Result<_, _>>()?;
    for (i, layer) in refs.iter().enumerate() {
        if refs[..i].iter().any(|earlier| earlier.name == layer.name) {
            return Err(ValidationError::new(
                "layers",
                format!("layer {} is listed twice", layer.name),
            ));
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_one_version_of_a_layer() {
        assert_eq!(
            LayerRef::parse("deps:12").unwrap(),
            LayerRef {
                name: "deps".into(),
                version: 12
            }
        );
        for bad in [
            "deps",
            "deps:",
            ":1",
            "deps:0",
            "deps:-1",
            "deps:01",
            "deps:+1",
            "Deps:1",
            "a:b:1",
            "deps:1.5",
            "deps:99999999999999999999",
        ] {
            assert!(LayerRef::parse(bad).is_err(), "{bad} accepted");
        }
        let many: Vec<String> = (1..=6).map(|i| format!("l{i}:1")).collect();
        assert!(parse_layer_refs(&many).is_err());
        assert_eq!(parse_layer_refs(&many[..5]).unwrap().len(), 5);
        let twice = ["deps:1".to_string(), "deps:2".to_string()];
        assert_eq!(
            parse_layer_refs(&twice).unwrap_err().message,
            "layer deps is listed twice"
        );
    }
}
