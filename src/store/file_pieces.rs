//! Blob pieces a plain socket can send straight from their file.
//!
//! A large piece of a blob (see `blob_reads`) is a read-only mapping of the blob file. While it
//! lives it is registered here with the file and the offset it maps. A connection on a plain TCP
//! socket (`crate::socket`) looks up every buffer it is asked to write: one that lies in a
//! registered piece is sent with `sendfile(2)` from the file's page-cache pages, so its bytes are
//! never copied through the node. (Written from the mapping, the socket's copy of every pulled
//! byte was most of the node's CPU on pulls; BENCHMARKS.md, "Pulls sent from the file".)
//!
//! The lookup is by address, which is sound because while a piece is registered its mapping holds
//! those addresses: a buffer inside them can only be that piece's bytes, and whoever asks holds
//! the buffer, so the piece (and with it the file's descriptor) lives until the answer is used.
//! Sending from the file sends the same bytes as the mapping because blob files are never written
//! or truncated once in place.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use memmap2::Mmap;

/// Every live piece, by the address its mapping starts at.
static PIECES: Mutex<BTreeMap<usize, Registered>> = Mutex::new(BTreeMap::new());
/// How many pieces are registered, so that writes of other buffers skip the lock while no blob
/// is being pulled.
static LIVE: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy)]
struct Registered {
    len: usize,
    fd: RawFd,
    offset: u64,
}

/// The bytes of a blob file at `offset`, mapped, registered for as long as the piece lives.
pub struct FilePiece {
    map: Mmap,
    /// Keeps the descriptor that lookups hand out open.
    _file: Arc<File>,
}

impl FilePiece {
    /// Registers `map`, which maps `file` from `offset`.
    pub fn new(map: Mmap, file: Arc<File>, offset: u64) -> FilePiece {
        let registered = Registered {
            len: map.len(),
            fd: file.as_raw_fd(),
            offset,
        };
        lock().insert(map.as_ptr() as usize, registered);
        LIVE.fetch_add(1, Ordering::Release);
        FilePiece { map, _file: file }
    }
}

impl AsRef<[u8]> for FilePiece {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for FilePiece {
    fn drop(&mut self) {
        // Before the mapping goes: its addresses may be reused as soon as it is unmapped.
        lock().remove(&(self.map.as_ptr() as usize));
        LIVE.fetch_sub(1, Ordering::Release);
    }
}

/// Where the bytes of a buffer that lies in a live piece are in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpan {
    /// The blob file's descriptor: valid while the piece holding the buffer lives.
    pub fd: RawFd,
    /// The file offset of the buffer's first byte.
    pub offset: u64,
    /// How many of the buffer's bytes the piece holds (the buffer may run past it).
    pub len: usize,
}

/// The file behind `buf`, if it lies in a live piece. `None` for an empty buffer.
pub fn find(buf: &[u8]) -> Option<FileSpan> {
    if buf.is_empty() || LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let addr = buf.as_ptr() as usize;
    let pieces = lock();
    let (&start, piece) = pieces.range(..=addr).next_back()?;
    let into = addr - start;
    (into < piece.len).then(|| FileSpan {
        fd: piece.fd,
        offset: piece.offset + into as u64,
        len: (piece.len - into).min(buf.len()),
    })
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<usize, Registered>> {
    // The map is consistent after every operation, so a panic elsewhere cannot leave it torn.
    PIECES.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use memmap2::MmapOptions;

    use super::*;

    fn piece(file: &Arc<File>, offset: u64, len: usize) -> FilePiece {
        // SAFETY: the test's file is not written while mapped.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map(&**file) }.unwrap();
        FilePiece::new(map, file.clone(), offset)
    }

    /// A buffer anywhere in a live piece names the file and the offset of its first byte; one
    /// outside it, or in a dropped piece, names nothing.
    #[test]
    fn a_buffer_in_a_live_piece_names_its_place_in_the_file() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 3 * 4096 + 100]).unwrap();
        let file = Arc::new(file);
        let fd = file.as_raw_fd();
        let piece = piece(&file, 4096 + 10, 2 * 4096);
        let bytes: &[u8] = piece.as_ref();
        let whole = find(bytes).unwrap();
        assert_eq!(
            whole,
            FileSpan {
                fd,
                offset: 4096 + 10,
                len: 2 * 4096
            }
        );
        let inner = find(&bytes[5000..5100]).unwrap();
        assert_eq!((inner.offset, inner.len), (4096 + 10 + 5000, 100));
        assert_eq!(find(&bytes[bytes.len() - 1..]).unwrap().len, 1);
        assert_eq!(find(&bytes[3..3]), None, "an empty buffer");
        let elsewhere = vec![0u8; 64];
        assert_eq!(find(&elsewhere), None);
        let addr = bytes.as_ptr() as usize;
        drop(piece);
        assert!(
            lock().get(&addr).is_none(),
            "a dropped piece is no longer registered"
        );
    }
}
