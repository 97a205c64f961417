//! Whether a client has hung up, asked of the socket without reading from it.
//!
//! A session reads its client's bytes only as fast as it writes them to disk, so after a
//! client is killed its last requests can wait in the socket and russh's queues for a
//! while; the kernel knows of the hang-up at once. Other sessions of the same request wait
//! for such a session to finish before they look at the file (see `sftp::Activity`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::sftp::HangupProbe;

/// A probe on its own handle to the socket: the socket stays open, and its descriptor
/// number cannot be reused by another connection, for as long as the probe lives.
pub fn probe(socket: &impl AsFd) -> HangupProbe {
    match socket.as_fd().try_clone_to_owned() {
        Ok(fd) => Arc::new(move || hung_up(&fd)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the socket for a hang-up");
            Arc::new(|| false)
        }
    }
}

/// The peer closed its side (FIN) or reset the connection, whether or not bytes it sent
/// are still unread.
fn hung_up(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::RDHUP)];
    match poll(&mut fds, Some(&Timespec::default())) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_hang_up_is_seen_with_data_still_unread() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let gone = probe(&server);
        client.write_all(&[7; 4096]).await.unwrap();
        assert!(!gone());
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gone() {
            assert!(std::time::Instant::now() < deadline, "hang-up never seen");
            tokio::task::yield_now().await;
        }
        // Unread bytes are still there to be read.
        let mut buf = [0; 8192];
        server.readable().await.unwrap();
        assert_eq!(server.try_read(&mut buf).unwrap(), 4096);
    }
}
