//! Serving a blob's bytes from its file.
//!
//! Large pieces are handed to the network as read-only mappings of the file's page-cache pages
//! instead of copies: a `read` copies every byte into a buffer of ours before the socket copies
//! it again, and with eight clients pulling that first copy was a quarter of the node's CPU
//! (BENCHMARKS.md, "Blob pulls from the page cache"). A mapping is faulted in whole
//! (`MADV_POPULATE_READ`) before it is handed on, so a disk error shows there, where it becomes a
//! `read` of the piece and that read's error, and not a `SIGBUS` later. (A page the kernel takes
//! back in the milliseconds before the socket copies it is read again on access; only a disk
//! failing in exactly that window would still raise the signal.) Blob files are never written
//! or truncated once renamed into place (garbage collection unlinks them, which leaves a mapping
//! valid), which is what makes a mapping safe to hold. Small pieces, the tail of a file shorter
//! than recorded, and whatever cannot be mapped and populated (kernels before Linux 5.14, file
//! systems without mappings, the process's mapping limit) are read into a buffer.
//!
//! Every mapped piece is registered (`file_pieces`): a plain socket to a peer off loopback sends
//! it from the file with `sendfile` (`Delivery::FromFile`), and then it is not faulted in at all,
//! since nothing reads it. (Were something to read it after all, its pages fault in on access.)

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use memmap2::{Advice, Mmap, MmapOptions};
use tokio::sync::mpsc;

use super::blobs::{BlobFiles, IO_CHUNK};
use super::file_pieces::FilePiece;
use crate::oci::error::IoContext;
use crate::oci::{Digest, Result};

/// Pieces at least this long are mapped rather than read: below it the mapping's set-up and
/// tear-down cost more than the copy they save.
const MAP_AT_LEAST: usize = 256 * 1024;

impl BlobFiles {
    /// Streams the blob file in `IO_CHUNK` pieces from `start` for `len` bytes, for `delivery`.
    pub fn read_stream(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
        delivery: Delivery,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
        let path = self.path(digest);
        let file = File::open(&path).context(|| format!("opening {path:?}"))?;
        let file_len = file
            .metadata()
            .context(|| format!("reading {path:?}"))?
            .len();
        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(2);
        tokio::task::spawn_blocking(move || {
            let mut pieces = Pieces {
                file: Arc::new(file),
                file_len,
                map: true,
                delivery,
            };
            let end = start + len;
            let mut offset = start;
            while offset < end {
                let want = (end - offset).min(IO_CHUNK as u64) as usize;
                let chunk = match pieces.next(offset, want) {
                    Ok(chunk) if chunk.is_empty() => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("blob file {path:?} is shorter than recorded"),
                    )),
                    Ok(chunk) => {
                        offset += chunk.len() as u64;
                        Ok(chunk)
                    }
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}

/// Where a blob stream's pieces go, which decides whether a mapped piece is faulted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// To a socket that sends mapped pieces from their file (`file_pieces`): nothing reads the
    /// mapping, so its pages are not faulted in.
    FromFile,
    /// Copied from memory (TLS, a peer on loopback, a request without the server's mark): a
    /// mapped piece is faulted in before it is handed on.
    FromMemory,
}

/// One open blob file, handing out its bytes piece by piece.
struct Pieces {
    file: Arc<File>,
    /// The length when the stream began: only bytes below it are ever mapped.
    file_len: u64,
    /// Cleared for the rest of the stream once a piece could not be mapped.
    map: bool,
    delivery: Delivery,
}

impl Pieces {
    /// Up to `want` bytes at `offset`; empty at the end of the file.
    fn next(&mut self, offset: u64, want: usize) -> io::Result<Bytes> {
        if self.map && want >= MAP_AT_LEAST && offset + want as u64 <= self.file_len {
            match self.mapped(offset, want) {
                Ok(chunk) => return Ok(chunk),
                // A disk error comes back from the read below, as it would have without mapping.
                Err(_) => self.map = false,
            }
        }
        let mut buf = BytesMut::with_capacity(want);
        read_spare_at(&self.file, &mut buf, want, offset)?;
        Ok(buf.freeze())
    }

    /// A read-only mapping of `len` bytes at `offset`, registered as a file piece; every page
    /// faulted in unless the piece is sent from the file.
    fn mapped(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        // SAFETY: the mapping is read-only and the file is a blob file, which nothing writes or
        // truncates once it is in place (see the module doc); the range lies within the length
        // the file had when the stream began.
        let map: Mmap = unsafe {
            MmapOptions::new()
                .offset(offset)
                .len(len)
                .map(&*self.file)?
        };
        if self.delivery == Delivery::FromMemory {
            map.advise(Advice::PopulateRead)?;
        }
        Ok(Bytes::from_owner(FilePiece::new(
            map,
            self.file.clone(),
            offset,
        )))
    }
}

/// Read up to `want` bytes at `offset` into the spare capacity of `buf` without zeroing it
/// first.
fn read_spare_at(file: &File, buf: &mut BytesMut, want: usize, offset: u64) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let want = want.min(spare.len());
    let target = spare.as_mut_ptr();
    loop {
        // SAFETY: the kernel writes at most `want` bytes into the spare capacity, which `buf`
        // owns; only the bytes it reports written become part of `buf`.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), target.cast(), want, offset as libc::off_t) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: `n` bytes past the length were just initialised by `pread`.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A blob file of `len` patterned bytes in a fresh store directory (for tests here and of the
/// socket that sends pieces).
#[cfg(test)]
pub(crate) fn blob_file_for_tests(len: usize) -> (tempfile::TempDir, BlobFiles, Digest, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let files = BlobFiles::new(dir.path()).unwrap();
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut hasher = crate::oci::Algorithm::Sha256.hasher();
    hasher.update(&bytes);
    let digest = hasher.finish();
    let (mut temp, temp_path) = files.new_temp().unwrap();
    std::io::Write::write_all(&mut temp, &bytes).unwrap();
    assert!(files.commit(&temp_path, &digest).unwrap());
    (dir, files, digest, bytes)
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    /// How many mappings of `path` this process holds.
    fn mappings_of(path: &std::path::Path) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = path.to_str().unwrap();
        maps.lines().filter(|l| l.ends_with(path)).count()
    }

    async fn pieces(files: &BlobFiles, digest: &Digest, start: u64, len: u64) -> Vec<Bytes> {
        let stream = files
            .read_stream(digest, start, len, Delivery::FromMemory)
            .unwrap();
        stream.map(|piece| piece.unwrap()).collect().await
    }

    /// Every range, page-aligned or not, short or spanning pieces, gives exactly the file's
    /// bytes; large pieces are mappings of the file (seen in `/proc/self/maps` while held), and
    /// none is left once they are dropped.
    #[tokio::test]
    async fn every_range_gives_the_files_bytes_and_leaves_no_mapping_behind() {
        let len = 3 * IO_CHUNK + IO_CHUNK / 2 + 123;
        let (_dir, files, digest, bytes) = blob_file_for_tests(len);
        let path = files.path(&digest);
        let ranges = [
            (0, len),
            (1, len - 1),
            (4095, 2 * IO_CHUNK),
            (len - 10, 10),
            (7, MAP_AT_LEAST),
            (0, MAP_AT_LEAST - 1),
        ];
        for (start, take) in ranges {
            let got = pieces(&files, &digest, start as u64, take as u64).await;
            assert_eq!(
                got.concat(),
                &bytes[start..start + take],
                "range {start}+{take}"
            );
            let mapped = got.iter().filter(|p| p.len() >= MAP_AT_LEAST).count();
            assert_eq!(
                mappings_of(&path),
                mapped,
                "range {start}+{take}: pieces of {MAP_AT_LEAST} bytes and more are mappings \
                 (on Linux 5.14 and later)"
            );
            drop(got);
            assert_eq!(mappings_of(&path), 0, "range {start}+{take}");
        }
    }

    /// A file shorter than its recorded size ends the stream with an error after the bytes it
    /// has; nothing past its end is mapped.
    #[tokio::test]
    async fn a_file_shorter_than_recorded_ends_with_an_error() {
        let len = IO_CHUNK + IO_CHUNK / 2;
        let (_dir, files, digest, bytes) = blob_file_for_tests(len);
        let stream = files
            .read_stream(&digest, 0, 3 * IO_CHUNK as u64, Delivery::FromMemory)
            .unwrap();
        let got: Vec<io::Result<Bytes>> = stream.collect().await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap()[..], bytes[..IO_CHUNK]);
        assert_eq!(got[1].as_ref().unwrap()[..], bytes[IO_CHUNK..]);
        let err = got[2].as_ref().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("shorter than recorded"), "{err}");
    }

    /// Garbage collection unlinks a blob file while a pull may still stream it: the pull still
    /// gets every byte.
    #[tokio::test]
    async fn a_blob_removed_while_it_streams_is_still_served_whole() {
        let len = 4 * IO_CHUNK;
        let (_dir, files, digest, bytes) = blob_file_for_tests(len);
        let stream = files.read_stream(&digest, 0, len as u64, Delivery::FromMemory);
        let mut stream = Box::pin(stream.unwrap());
        let mut got = stream.next().await.unwrap().unwrap().to_vec();
        assert_eq!(files.remove(&digest).unwrap(), len as u64);
        while let Some(piece) = stream.next().await {
            got.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(got, bytes);
    }
}
