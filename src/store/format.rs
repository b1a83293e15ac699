//! The data directory's format version, so upgrades are safe in both directions.
//!
//! An IoT Edge user upgrades by changing the image tag; the data volume stays. `format.json` in
//! the data directory says which layout the files and sled trees follow. A newer binary opens an
//! older directory and migrates it in place; an older binary refuses a newer directory by name
//! instead of misreading it. A directory with metadata but no `format.json` was written before
//! versioning: format 1.
//!
//! Migrations are idempotent and run before the new version is written (temp file, fsync,
//! rename, fsync of the directory), so a kill -9 during one leaves the old version recorded and
//! the next start simply runs it again.
//!
//! | format | change |
//! |--------|--------|
//! | 1 | the first layout (no `format.json`) |
//! | 2 | `tag_use`: per tag, where it came from (pushed here or synced) and when it was last pulled, for eviction under `storage.maxSize` |
//! | 3 | a manifest record's first byte also says whether its bytes name their media type (a GET by tag then skips the repository's link); records of format 2 stay valid, nothing is rewritten |

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::blobs::sync_dir;
use crate::oci::error::IoContext;
use crate::oci::{Error, ErrorCode, Result};

/// The format this binary writes.
pub const CURRENT_FORMAT: u32 = 3;

const FORMAT_FILE: &str = "format.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FormatFile {
    format: u32,
    /// The version of the binary that last wrote it, for the message an older binary gives.
    written_by: String,
}

/// The format of the data directory at `root`: `None` for a new, empty one.
pub(super) fn read_format(root: &Path) -> Result<Option<u32>> {
    let path = root.join(FORMAT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Metadata without a format file: written before formats were versioned.
            return Ok(root.join("metadata").exists().then_some(1));
        }
        Err(e) => return Err(e).context(|| format!("reading {path:?}")),
    };
    let file: FormatFile = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorCode::Unknown,
            format!("{path:?} is not a data format file ({e}); it was not written by connected-registry"),
        )
    })?;
    if file.format > CURRENT_FORMAT {
        return Err(Error::new(
            ErrorCode::Unknown,
            format!(
                "data directory {root:?} holds data format {}, written by connected-registry {}; \
                 this binary ({}) reads data formats up to {CURRENT_FORMAT}. Run connected-registry \
                 {} or newer on it (downgrading is not supported), or give another --data-dir",
                file.format,
                file.written_by,
                env!("CARGO_PKG_VERSION"),
                file.written_by
            ),
        ));
    }
    Ok(Some(file.format))
}

/// Record that the directory at `root` is in [`CURRENT_FORMAT`], crash-safely.
pub(super) fn write_current(root: &Path) -> Result<()> {
    let file = FormatFile {
        format: CURRENT_FORMAT,
        written_by: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let tmp = root.join(format!("{FORMAT_FILE}.tmp"));
    let path = root.join(FORMAT_FILE);
    let json = serde_json::to_vec_pretty(&file).expect("the format file serialises");
    (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })()
    .context(|| format!("writing {path:?}"))?;
    sync_dir(root)
}
