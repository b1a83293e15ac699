//! Blob bytes on disk, one file per digest: `blobs/<algorithm>/<hh>/<hex>`.
//!
//! A blob file only ever appears by `rename` of a temp file that was fully written, verified and
//! fsync'd, so a file at a blob path is always complete and correct; a crash leaves at most a temp
//! file, which the next start removes. One copy serves every repository that links the digest.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::upload_hash::UploadHash;
use crate::oci::error::IoContext;
use crate::oci::{Digest, Error, ErrorCode, Hasher, Result};

/// Size of each disk read when serving a blob and of each write when receiving one: ~1 MiB reads
/// are twice as fast as 64 KiB ones on this class of machine.
pub const IO_CHUNK: usize = 1024 * 1024;

/// Ask the kernel to start writing back every this many bytes while a blob streams in, so the
/// final fsync has little left to do. The window before is then waited for and dropped from the
/// page cache (drop-behind), so an upload keeps at most two windows of its bytes in memory: a
/// large push does not push the node's working set (manifests, hot layers) out of the cache,
/// and its pages are reused window after window instead of taking fresh memory for every byte.
/// Fresh memory is what a 256 MiB push paid for on a VM whose host takes back freed guest pages
/// (virtio-balloon free page reporting): 0.65–1.1 s instead of 0.3–0.4 s, the kernel's copy into
/// new page-cache pages taking two-thirds of the server's CPU (BENCHMARKS.md).
const WRITEBACK_EVERY: u64 = 16 * 1024 * 1024;

/// Request-body frames at least this large are written as they are, without copying.
const PASS_THROUGH_FRAME: usize = 64 * 1024;

/// Chunks in flight between the network and the disk writer (bounds memory per upload).
const PIPELINE_DEPTH: usize = 4;

#[derive(Debug, Clone)]
pub struct BlobFiles {
    blobs: PathBuf,
    tmp: PathBuf,
}

impl BlobFiles {
    pub fn new(root: &Path) -> Result<BlobFiles> {
        let files = BlobFiles {
            blobs: root.join("blobs"),
            tmp: root.join("tmp"),
        };
        fs::create_dir_all(&files.blobs).context(|| format!("creating {:?}", files.blobs))?;
        fs::create_dir_all(&files.tmp).context(|| format!("creating {:?}", files.tmp))?;
        Ok(files)
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Remove temp files a crash left behind. Returns how many were removed.
    pub fn clean_temp(&self) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.tmp).context(|| format!("listing {:?}", self.tmp))? {
            let entry = entry.context(|| format!("listing {:?}", self.tmp))?;
            fs::remove_file(entry.path()).context(|| format!("removing {:?}", entry.path()))?;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn new_temp(&self) -> Result<(File, PathBuf)> {
        let path = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let file = File::create(&path).context(|| format!("creating {path:?}"))?;
        Ok((file, path))
    }

    /// Make the fully written file at `src` the blob `digest`: fsync it, rename it into place and
    /// fsync the directory. If the blob already exists the source is simply removed and the
    /// existing file claimed (see [`BlobFiles::claim`]). Returns whether a new file was placed.
    pub fn commit(&self, src: &Path, digest: &Digest) -> Result<bool> {
        let dest = self.path(digest);
        if self.claim(digest) {
            fs::remove_file(src).context(|| format!("removing {src:?}"))?;
            return Ok(false);
        }
        File::open(src)
            .and_then(|f| f.sync_all())
            .context(|| format!("syncing {src:?}"))?;
        let dir = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).context(|| format!("creating {dir:?}"))?;
        fs::rename(src, &dest).context(|| format!("renaming {src:?} to {dest:?}"))?;
        sync_dir(dir)?;
        self.claim(digest);
        Ok(true)
    }

    /// Whether the blob file exists; if it does, its modification time becomes now, which tells
    /// garbage collection it was just written or linked (its grace period starts again).
    pub fn claim(&self, digest: &Digest) -> bool {
        match File::open(self.path(digest)) {
            Ok(file) => {
                let _ = file.set_modified(std::time::SystemTime::now());
                true
            }
            Err(_) => false,
        }
    }

    /// Delete the blob file; returns the bytes freed (0 if it was already gone).
    pub fn remove(&self, digest: &Digest) -> Result<u64> {
        let path = self.path(digest);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).context(|| format!("reading {path:?}")),
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).context(|| format!("removing blob file {path:?}")),
        }
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("syncing directory {dir:?}"))
}

/// The outcome of streaming a request body into a file.
pub struct Appended {
    pub file: File,
    pub hasher: Option<Hasher>,
    pub written: u64,
    /// Set when the body stream failed (client went away, framing error): what was written so far
    /// is still in the file and counted in `written`.
    pub body_error: Option<io::Error>,
}

/// Streams `body` to the end of `file` on a blocking thread, hashing as it goes (beside it, once
/// the upload is large: `upload_hash.rs`), while the network side keeps receiving. Memory is
/// bounded by a few pipeline depths of chunks.
pub async fn append_stream<S>(
    file: File,
    hasher: Option<Hasher>,
    mut body: S,
    file_offset: u64,
) -> Result<Appended>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<(File, Option<Hasher>, u64)> {
        let mut file = file;
        let mut hash = UploadHash::new(hasher);
        let mut written = 0u64;
        let mut unflushed_from = file_offset;
        // The window whose writeback was started last.
        let mut in_writeback: Option<(u64, u64)> = None;
        while let Some(chunk) = rx.blocking_recv() {
            hash.update(&chunk);
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
            let end = file_offset + written;
            if end - unflushed_from >= WRITEBACK_EVERY {
                start_writeback(&file, unflushed_from, end - unflushed_from);
                let previous = in_writeback.replace((unflushed_from, end - unflushed_from));
                if let Some((from, len)) = previous {
                    drop_behind(&file, from, len);
                }
                unflushed_from = end;
            }
        }
        // The tail goes to the disk while the hash catches up: the fsync that makes the blob
        // durable then finds less to write.
        let end = file_offset + written;
        if end > unflushed_from {
            start_writeback(&file, unflushed_from, end - unflushed_from);
        }
        Ok((file, hash.finish(), written))
    });

    let mut pending = BytesMut::new();
    let mut body_error = None;
    loop {
        match body.next().await {
            Some(Ok(frame)) => {
                // Large frames (hyper hands over several hundred KiB at a time) go straight
                // through; only small ones are gathered, to keep write calls large.
                if pending.is_empty() && frame.len() >= PASS_THROUGH_FRAME {
                    if tx.send(frame).await.is_err() {
                        break;
                    }
                    continue;
                }
                pending.extend_from_slice(&frame);
                if pending.len() >= IO_CHUNK && tx.send(pending.split().freeze()).await.is_err() {
                    break;
                }
            }
            Some(Err(e)) => {
                body_error = Some(e);
                break;
            }
            None => break,
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(pending.freeze()).await;
    }
    drop(tx);
    let (file, hasher, written) = writer
        .await
        .map_err(|e| io::Error::other(format!("disk writer task failed: {e}")))
        .and_then(|r| r)
        .context(|| "writing blob data".to_owned())?;
    Ok(Appended {
        file,
        hasher,
        written,
        body_error,
    })
}

fn start_writeback(file: &File, offset: u64, len: u64) {
    // Failure only means the final fsync does more work.
    sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
}

/// Wait until the range's writeback has finished, then drop its now clean pages from the page
/// cache. Durability still comes from the fsync before the blob's rename; this only bounds the
/// cache an upload takes. Both calls are advice: a filesystem that ignores them (tmpfs) keeps
/// the pages, nothing else changes.
fn drop_behind(file: &File, offset: u64, len: u64) {
    sync_range(
        file,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    // SAFETY: plain syscall on a valid fd.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) {
    // SAFETY: plain syscall on a valid fd.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

/// Hash a whole file from disk (used when an upload resumed after a restart lost its hasher).
pub fn hash_file(path: &Path, mut hasher: Hasher) -> Result<Digest> {
    let mut file = File::open(path).context(|| format!("opening {path:?}"))?;
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .context(|| format!("reading {path:?}"))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

pub fn body_error(e: io::Error) -> Error {
    Error::new(
        ErrorCode::BlobUploadInvalid,
        format!("the request body ended early or could not be read: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    /// How many of the pages of `file`'s first `len` bytes are in the page cache.
    fn resident_pages(file: &File, len: usize) -> usize {
        let page = 4096;
        // SAFETY: a read-only shared mapping of a file this test owns, unmapped before return;
        // mincore only reads the page tables, it faults nothing in.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
            let mut vec = vec![0u8; len.div_ceil(page)];
            let rc = libc::mincore(addr, len, vec.as_mut_ptr());
            libc::munmap(addr, len);
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            vec.iter().filter(|v| **v & 1 == 1).count()
        }
    }

    /// A large upload keeps only its last windows in the page cache (drop-behind), and every
    /// byte still reaches the file: its digest is the one the bytes have.
    #[tokio::test]
    async fn a_large_upload_drops_what_is_on_disk_from_the_page_cache() {
        // On the checkout's disk: tmpfs (a /tmp of some machines) keeps every page by design.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("upload");
        let file = File::create(&path).unwrap();
        let mib = 1024 * 1024;
        let chunks: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; mib])).collect();
        let mut expected = Algorithm::Sha256.hasher();
        for chunk in &chunks {
            expected.update(chunk);
        }
        let body = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, io::Error>));
        let appended = append_stream(file, Some(Algorithm::Sha256.hasher()), body, 0)
            .await
            .unwrap();
        assert_eq!(appended.written, 64 * mib as u64);
        assert_eq!(appended.hasher.unwrap().finish(), expected.finish());
        appended.file.sync_all().unwrap();

        let file = File::open(&path).unwrap();
        let head = 48 * mib;
        let resident = resident_pages(&file, head);
        assert!(
            resident < head / 4096 / 10,
            "{resident} of the first 48 MiB's {} pages are still cached",
            head / 4096
        );
        let mut read = Vec::new();
        (&file).read_to_end(&mut read).unwrap();
        assert_eq!(read.len(), 64 * mib);
        assert!(read
            .chunks(mib)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
    }
}
