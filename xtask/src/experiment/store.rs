//! Keys and cached results: a key is the SHA-256 of everything a result depends on (as
//! canonical JSON, plus raw bytes such as weights and images), and a cached result is a
//! JSON file holding its key next to its value, written atomically. A result is reused
//! only when the stored key equals the key of the present inputs.

use std::path::Path;

use cinder_tensor::io::write_json_atomic;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Incremental SHA-256 over the inputs of a result.
#[derive(Default)]
pub struct Key(Sha256);

impl Key {
    pub fn new(domain: &str) -> Self {
        let mut key = Self::default();
        key.bytes(domain.as_bytes());
        key
    }

    /// Adds a length-prefixed byte string (so that concatenations cannot collide).
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds the canonical JSON of `value`.
    pub fn json(&mut self, value: &impl Serialize) -> anyhow::Result<&mut Self> {
        Ok(self.bytes(&serde_json::to_vec(value)?))
    }

    pub fn hex(&self) -> String {
        self.0
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct Cached<T> {
    key: String,
    value: T,
}

/// The value stored at `path` under `key`; `None` when the file is absent, unreadable
/// or was made from other inputs.
pub fn read_cached<T: DeserializeOwned>(path: &Path, key: &str) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    let cached: Cached<T> = serde_json::from_slice(&text).ok()?;
    (cached.key == key).then_some(cached.value)
}

/// Stores `value` under `key` at `path`, atomically.
pub fn write_cached<T: Serialize>(path: &Path, key: &str, value: &T) -> anyhow::Result<()> {
    Ok(write_json_atomic(
        path,
        &Cached {
            key: key.to_owned(),
            value,
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_inputs_and_caches_honour_them() {
        let k = |parts: &[&[u8]]| {
            let mut key = Key::new("t");
            parts.iter().for_each(|p| {
                key.bytes(p);
            });
            key.hex()
        };
        assert_eq!(k(&[b"ab", b"c"]), k(&[b"ab", b"c"]));
        assert_ne!(k(&[b"ab", b"c"]), k(&[b"a", b"bc"]));
        assert_eq!(k(&[]).len(), 64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert_eq!(read_cached::<u32>(&path, "k1"), None);
        write_cached(&path, "k1", &7u32).unwrap();
        assert_eq!(read_cached::<u32>(&path, "k1"), Some(7));
        assert_eq!(read_cached::<u32>(&path, "k2"), None);
        assert_eq!(read_cached::<String>(&path, "k1"), None);
        std::fs::write(&path, "{truncated").unwrap();
        assert_eq!(read_cached::<u32>(&path, "k1"), None);
    }
}
