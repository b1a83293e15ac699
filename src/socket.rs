//! A plain TCP connection's socket that sends blob pieces from their files. (Its own module
//! because the server makes it and a change-feed stream (`api::feed_stream`) unwraps it.)
//!
//! hyper writes a response's body buffers to the socket as they are. A buffer that lies in a
//! live blob piece (`store::file_pieces`) is sent with `sendfile(2)` from the blob file's
//! page-cache pages instead of being copied into the socket from memory; everything else (heads,
//! manifests, small pieces) is written as before. TLS connections encrypt every byte in memory
//! and do not use this; a peer on loopback gets pieces written from memory too
//! (`server::sends_from_files` says why).

use std::io::{self, IoSlice};
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::store::file_pieces::{self, FileSpan};
use crate::store::Delivery;

/// A TCP socket whose writes of blob pieces go from the file.
pub struct FileSendingSocket {
    tcp: TcpStream,
    /// Cleared once the kernel refuses `sendfile` here: pieces are then written from memory.
    sendfile: bool,
    /// Whether the first piece sent from its file was logged (once per connection).
    announced: bool,
}

impl FileSendingSocket {
    /// `sendfile`: whether blob pieces go from their files (otherwise they are written from
    /// memory, like any other buffer).
    pub fn new(tcp: TcpStream, sendfile: bool) -> FileSendingSocket {
        FileSendingSocket {
            tcp,
            sendfile,
            announced: false,
        }
    }

    /// How blob streams written to this socket should hand out their pieces.
    pub fn delivery(&self) -> Delivery {
        if self.sendfile {
            Delivery::FromFile
        } else {
            Delivery::FromMemory
        }
    }

    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }

    /// The piece `buf` lies in, if it should be sent from its file.
    fn piece(&self, buf: &[u8]) -> Option<FileSpan> {
        if self.sendfile {
            file_pieces::find(buf)
        } else {
            None
        }
    }

    /// Send `span` (the start of `buf`) from its file; written from `buf` if the kernel cannot.
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        span: FileSpan,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                let mut offset = span.offset as libc::off_t;
                // SAFETY: `span.fd` is the blob file's descriptor, open while the piece holding
                // `buf` lives, and the caller holds `buf`; the kernel writes only `offset`.
                let n =
                    unsafe { libc::sendfile(self.tcp.as_raw_fd(), span.fd, &mut offset, span.len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            return match sent {
                Ok(0) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a blob file ended before the bytes it was to send",
                ))),
                Ok(n) => {
                    if !self.announced {
                        self.announced = true;
                        tracing::debug!("sending blob pieces from their files");
                    }
                    Poll::Ready(Ok(n))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) if refused(&e) => {
                    tracing::debug!(error = %e, "sendfile refused; writing blob pieces from memory");
                    self.sendfile = false;
                    Pin::new(&mut self.tcp).poll_write(cx, buf)
                }
                Err(e) => Poll::Ready(Err(e)),
            };
        }
    }
}

/// Errors that say `sendfile` cannot be used here at all (not that this write failed).
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

impl AsyncRead for FileSendingSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for FileSendingSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.piece(buf) {
            Some(span) => this.poll_send_file(cx, span, buf),
            None => Pin::new(&mut this.tcp).poll_write(cx, buf),
        }
    }

    /// A piece first in line is sent from its file; otherwise the buffers before the first
    /// piece are written together.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let skip = bufs.iter().take_while(|b| b.is_empty()).count();
        let bufs = &bufs[skip..];
        let Some(first) = bufs.first() else {
            return Poll::Ready(Ok(0));
        };
        if let Some(span) = this.piece(first) {
            return this.poll_send_file(cx, span, first);
        }
        let plain = 1 + bufs[1..]
            .iter()
            .take_while(|b| this.piece(b).is_none())
            .count();
        Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[..plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::store::blob_file_for_tests;
    use crate::store::blobs::IO_CHUNK;

    /// Resident kilobytes of the mapping that starts at `addr`, from `/proc/self/smaps`.
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        assert!(lines.next().is_some(), "no mapping at {head}");
        let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// A socket of a loopback connection (`sendfile` as given) and the task that reads all
    /// that arrives at its other end.
    async fn connected(sendfile: bool) -> (FileSendingSocket, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            got
        });
        let (tcp, _) = listener.accept().await.unwrap();
        (FileSendingSocket::new(tcp, sendfile), reader)
    }

    /// Pieces meant to go from their file (so not faulted in), on a connection where the kernel
    /// refused `sendfile`: they are written from memory, a head before them in the same
    /// vectored write included, and arrive whole.
    #[tokio::test]
    async fn after_sendfile_is_refused_pieces_are_written_from_memory_and_arrive_whole() {
        let len = 2 * IO_CHUNK + 999;
        let (_dir, files, digest, bytes) = blob_file_for_tests(len);
        let (mut socket, reader) = connected(true).await;
        let stream = files
            .read_stream(&digest, 0, len as u64, socket.delivery())
            .unwrap();
        socket.sendfile = false; // as after EINVAL from the kernel
        let pieces: Vec<Bytes> = stream.map(|p| p.unwrap()).collect().await;
        let mapped = pieces.iter().filter(|p| file_pieces::find(p).is_some());
        for piece in mapped {
            assert_eq!(resident_kib(piece.as_ptr() as usize), 0, "not faulted in");
        }
        let head = Bytes::from_static(b"HEAD\r\n");
        let slices = [IoSlice::new(&head), IoSlice::new(&pieces[0])];
        let n = socket.write_vectored(&slices).await.unwrap();
        assert!(n > head.len(), "the head and the piece go in one write");
        socket
            .write_all(&pieces[0][n - head.len()..])
            .await
            .unwrap();
        for piece in &pieces[1..] {
            socket.write_all(piece).await.unwrap();
        }
        socket.shutdown().await.unwrap();
        drop(socket);
        let got = reader.await.unwrap();
        assert_eq!(&got[..head.len()], &head[..]);
        assert_eq!(&got[head.len()..], &bytes[..]);
    }

    /// A piece whose pages the file can no longer give (here: cut short under it, as a failing
    /// disk would) fails the write with an error, sent from the file or from memory: the
    /// kernel's copy out of a mapping that cannot be faulted in is `EFAULT`, not the `SIGBUS`
    /// that touching those pages in the process would raise (which would end the node).
    #[tokio::test]
    async fn a_piece_the_file_cannot_give_fails_the_write_and_the_process_lives_on() {
        let len = 2 * IO_CHUNK;
        let (_dir, files, digest, bytes) = blob_file_for_tests(len);
        let path = files.path(&digest);
        let read_only = std::fs::metadata(&path).unwrap().permissions();
        for sendfile in [true, false] {
            let (mut socket, reader) = connected(true).await;
            let stream = files
                .read_stream(&digest, 0, len as u64, socket.delivery())
                .unwrap();
            socket.sendfile = sendfile;
            let pieces: Vec<Bytes> = stream.map(|p| p.unwrap()).collect().await;
            assert!(pieces.iter().all(|p| file_pieces::find(p).is_some()));
            #[allow(clippy::permissions_set_readonly_false)]
            let writable = {
                let mut p = read_only.clone();
                p.set_readonly(false);
                p
            };
            std::fs::set_permissions(&path, writable).unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(0).unwrap();
            let written = socket.write_all(&pieces[1]).await;
            assert!(
                written.is_err(),
                "sendfile {sendfile}: bytes past the file's end were written"
            );
            drop(socket);
            reader.await.unwrap();
            // Whole again for the next round.
            std::io::Write::write_all(&mut &file, &bytes).unwrap();
            std::fs::set_permissions(&path, read_only.clone()).unwrap();
        }
    }

    /// A blob's pieces written through the socket arrive whole and in order, a head before them
    /// in the same vectored write included, and the mapped pieces' pages were never touched in
    /// this process: the bytes went from the file, not through memory.
    #[tokio::test]
    async fn pieces_go_from_the_file_and_arrive_whole() {
        let len = 3 * IO_CHUNK + 4321;
        let (_dir, files, digest, bytes) = blob_file_for_tests(len);

        let (mut socket, reader) = connected(true).await;
        assert_eq!(socket.delivery(), Delivery::FromFile);

        let start = 77u64;
        let stream = files
            .read_stream(&digest, start, len as u64 - start, socket.delivery())
            .unwrap();
        let pieces: Vec<Bytes> = stream.map(|p| p.unwrap()).collect().await;
        assert!(
            pieces
                .iter()
                .filter(|p| file_pieces::find(p).is_some())
                .count()
                >= 3
        );
        let head = Bytes::from_static(b"HEAD\r\n");
        let mut queue = vec![head.clone(), pieces[0].clone()];
        // A vectored write of a head and a piece, as hyper does, until both are out.
        while !queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = queue.iter().map(|b| IoSlice::new(b)).collect();
            let mut n = socket.write_vectored(&slices).await.unwrap();
            while n > 0 {
                let take = n.min(queue[0].len());
                let _ = queue[0].split_to(take);
                n -= take;
                if queue[0].is_empty() {
                    queue.remove(0);
                }
            }
        }
        for piece in &pieces[1..] {
            socket.write_all(piece).await.unwrap();
        }
        for piece in pieces.iter().filter(|p| file_pieces::find(p).is_some()) {
            assert_eq!(resident_kib(piece.as_ptr() as usize & !4095), 0);
        }
        socket.shutdown().await.unwrap();
        drop(socket);
        let got = reader.await.unwrap();
        assert_eq!(&got[..head.len()], &head[..]);
        assert_eq!(&got[head.len()..], &bytes[start as usize..]);
    }
}
