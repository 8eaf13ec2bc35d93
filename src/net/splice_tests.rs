use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A connected pair of loopback sockets: (the client's end, the server's end).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

/// Bytes that are not all alike, so a reordering or a lost pipe would show.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn both_directions_arrive_whole_and_in_order_and_are_counted() {
    // client ⇄ (a | relay | b) ⇄ server
    let (mut client, a) = pair().await;
    let (b, mut server) = pair().await;
    let relay =
        tokio::spawn(async move { splice_bidirectional(&a, &b, Pipes::new().unwrap()).await });
    // Several pipes' worth each way, at once: neither direction may wait on the other.
    let up = pattern(5 * PIPE_BYTES + 123, 7);
    let down = pattern(3 * PIPE_BYTES + 45, 99);
    let (up2, down2) = (up.clone(), down.clone());
    let (mut c_rd, mut c_wr) = client.split();
    let (mut s_rd, mut s_wr) = server.split();
    let send_up = async {
        c_wr.write_all(&up2).await.unwrap();
        c_wr.shutdown().await.unwrap();
    };
    let send_down = async {
        s_wr.write_all(&down2).await.unwrap();
        s_wr.shutdown().await.unwrap();
    };
    let read_up = async {
        let mut got = Vec::new();
        s_rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let read_down = async {
        let mut got = Vec::new();
        c_rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), (), got_up, got_down) = tokio::join!(send_up, send_down, read_up, read_down);
    assert!(
        got_up == up,
        "client to server: {} of {} bytes, or out of order",
        got_up.len(),
        up.len()
    );
    assert!(
        got_down == down,
        "server to client: {} of {} bytes, or out of order",
        got_down.len(),
        down.len()
    );
    let r = relay.await.unwrap();
    r.result.unwrap();
    assert_eq!((r.a_to_b, r.b_to_a), (up.len() as u64, down.len() as u64));
}

#[tokio::test]
async fn one_side_closing_half_closes_the_other_and_the_answer_still_comes_back() {
    let (mut client, a) = pair().await;
    let (b, mut server) = pair().await;
    let relay =
        tokio::spawn(async move { splice_bidirectional(&a, &b, Pipes::new().unwrap()).await });
    client.write_all(b"question").await.unwrap();
    client.shutdown().await.unwrap();
    // The server sees the question and then its end (the relay shut its write side)…
    let mut q = Vec::new();
    server.read_to_end(&mut q).await.unwrap();
    assert_eq!(q, b"question");
    // …and its answer still reaches the client, whose side is half closed only.
    server.write_all(b"answer").await.unwrap();
    server.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer");
    let r = relay.await.unwrap();
    r.result.unwrap();
    assert_eq!((r.a_to_b, r.b_to_a), (8, 6));
}

#[tokio::test]
async fn a_reset_ends_the_relay_with_an_error() {
    let (client, a) = pair().await;
    let (b, mut server) = pair().await;
    let relay =
        tokio::spawn(async move { splice_bidirectional(&a, &b, Pipes::new().unwrap()).await });
    // A close with unread data resets the connection.
    server.write_all(b"unread").await.unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(client);
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), relay)
        .await
        .expect("the relay ended")
        .unwrap();
    assert!(r.result.is_err(), "{r:?}");
    // The server's side is closed too.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        server.read_to_end(&mut rest),
    )
    .await
    .expect("the server's connection ended");
}

#[test]
fn a_pipe_holds_what_one_splice_asks_for() {
    let p = Pipe::new().unwrap();
    // The kernel rounds up to pages; a pipe that could not grow keeps the default.
    assert!(p.capacity >= 64 << 10, "{}", p.capacity);
    assert!(p.capacity <= 2 * PIPE_BYTES, "{}", p.capacity);
}
