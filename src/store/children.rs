//! The children of this node, as a parent knows them: which instance of each name is active
//! (so a second one is refused), in which mode, since when.
//!
//! Activation is persisted (sled tree `children`), so a parent that restarts still refuses a
//! second instance. What each child last reported about itself is kept in memory by the API:
//! it is refreshed every few seconds and stale after a restart anyway.

use serde::{Deserialize, Serialize};

use super::Store;
use crate::oci::{Error, ErrorCode, Result};

const TREE: &str = "children";

/// One child's activation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildRecord {
    pub name: String,
    /// The instance that holds the name while active.
    pub instance_id: String,
    pub mode: String,
    pub version: String,
    pub active: bool,
    /// When it was last activated or deactivated.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Why an activation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationRefused {
    /// Another instance holds the name.
    AlreadyActivated { instance_id: String },
}

impl Store {
    fn children_tree(&self) -> Result<sled::Tree> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// Activate `instance_id` as child `name`: allowed when the name is not active or is held by
    /// this same instance (a restart). Atomic, so two instances racing cannot both win.
    pub async fn activate_child(
        &self,
        name: &str,
        instance_id: &str,
        mode: &str,
        version: &str,
    ) -> Result<std::result::Result<ChildRecord, ActivationRefused>> {
        let tree = self.children_tree()?;
        let record = ChildRecord {
            name: name.to_owned(),
            instance_id: instance_id.to_owned(),
            mode: mode.to_owned(),
            version: version.to_owned(),
            active: true,
            since: chrono::Utc::now(),
        };
        let encoded = serde_json::to_vec(&record).map_err(internal)?;
        let mut refused = None;
        tree.fetch_and_update(name.as_bytes(), |current| {
            refused = None;
            let current: Option<ChildRecord> = current.and_then(|v| serde_json::from_slice(v).ok());
            match current {
                Some(c) if c.active && c.instance_id != instance_id => {
                    refused = Some(ActivationRefused::AlreadyActivated {
                        instance_id: c.instance_id.clone(),
                    });
                    Some(serde_json::to_vec(&c).unwrap_or_default())
                }
                Some(c) if c.active => {
                    // The same instance again: keep its original `since`.
                    let same = ChildRecord {
                        since: c.since,
                        ..record.clone()
                    };
                    Some(serde_json::to_vec(&same).unwrap_or_default())
                }
                _ => Some(encoded.clone()),
            }
        })?;
        self.flush().await?;
        if let Some(refused) = refused {
            return Ok(Err(refused));
        }
        Ok(Ok(self.child(name)?.unwrap_or(record)))
    }

    /// Mark `name` inactive so another instance may activate; `instance_id`, when given, must be
    /// the active one (a child's clean shutdown cannot deactivate a newer instance). Returns
    /// whether anything changed.
    pub async fn deactivate_child(&self, name: &str, instance_id: Option<&str>) -> Result<bool> {
        let tree = self.children_tree()?;
        let mut changed = false;
        tree.fetch_and_update(name.as_bytes(), |current| {
            changed = false;
            let bytes = current?;
            let Ok(mut c) = serde_json::from_slice::<ChildRecord>(bytes) else {
                return Some(bytes.to_vec());
            };
            if c.active && instance_id.is_none_or(|i| i == c.instance_id) {
                c.active = false;
                c.since = chrono::Utc::now();
                changed = true;
            }
            Some(serde_json::to_vec(&c).unwrap_or_else(|_| bytes.to_vec()))
        })?;
        self.flush().await?;
        Ok(changed)
    }

    pub fn child(&self, name: &str) -> Result<Option<ChildRecord>> {
        self.children_tree()?
            .get(name.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(internal))
            .transpose()
    }

    /// Every child ever activated here, by name (bounded by the number of sync tokens that can
    /// activate; at most `limit` are returned).
    pub fn children(&self, limit: usize) -> Result<Vec<ChildRecord>> {
        let mut out = Vec::new();
        for item in self.children_tree()?.iter().take(limit) {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(internal)?);
        }
        Ok(out)
    }
}

fn internal(e: serde_json::Error) -> Error {
    Error::new(ErrorCode::Unknown, format!("child record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_instance_per_name_until_deactivated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store
            .activate_child("factorya", "i1", "ReadOnly", "0.1")
            .await
            .unwrap();
        assert!(first.is_ok());
        assert!(store
            .activate_child("factorya", "i1", "ReadOnly", "0.1")
            .await
            .unwrap()
            .is_ok());
        let refused = store
            .activate_child("factorya", "i2", "ReadOnly", "0.1")
            .await
            .unwrap();
        assert_eq!(
            refused,
            Err(ActivationRefused::AlreadyActivated {
                instance_id: "i1".into()
            })
        );
        assert!(!store
            .deactivate_child("factorya", Some("i2"))
            .await
            .unwrap());
        assert!(store.deactivate_child("factorya", None).await.unwrap());
        assert!(store
            .activate_child("factorya", "i2", "ReadOnly", "0.1")
            .await
            .unwrap()
            .is_ok());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.child("factorya").unwrap().unwrap().instance_id, "i2");
        assert_eq!(store.children(10).unwrap().len(), 1);
    }
}
