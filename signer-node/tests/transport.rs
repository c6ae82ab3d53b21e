//! A frame acknowledged is a frame delivered (issue 15): two transports on
//! real libp2p sockets in one process. The receiver answers `busy` a few
//! times (a full session queue or early-frame budget); the sender keeps
//! sending the frame with backoff until it is accepted, then stops.

use std::time::Duration;

use custos_signer_node::transport::{party_of, FrameAnswer, NetEvent, Network, NetworkConfig};
use libp2p::identity;

async fn network(
    keypair: identity::Keypair,
    peers: Vec<(custos_protocol::PartyId, Option<libp2p::Multiaddr>)>,
) -> (Network, tokio::sync::mpsc::Receiver<NetEvent>) {
    Network::start(NetworkConfig {
        keypair,
        listen: Some("/ip4/127.0.0.1/tcp/0".parse().unwrap()),
        peers,
        job_timeout: Duration::from_secs(10),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_receiver_gets_the_frame_again_until_it_accepts_it() {
    let sender_key = identity::Keypair::generate_ed25519();
    let receiver_key = identity::Keypair::generate_ed25519();
    let sender_party = party_of(&sender_key).unwrap();
    let receiver_party = party_of(&receiver_key).unwrap();
    let (receiver, mut inbound) = network(receiver_key, vec![(sender_party, None)]).await;
    let mut address = None;
    for _ in 0..100 {
        address = receiver.listen_addrs().await.into_iter().next();
        if address.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sender, _events) = network(sender_key, vec![(receiver_party, address)]).await;

    // The receiver is busy three times, then takes the frame.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut deliveries = 0u32;
        while let Some(event) = inbound.recv().await {
            if let NetEvent::Frame {
                from,
                bytes,
                respond,
            } = event
            {
                deliveries += 1;
                let _ = seen_tx.send((from, bytes, deliveries));
                let answer = if deliveries <= 3 {
                    FrameAnswer::Busy
                } else {
                    FrameAnswer::Accepted
                };
                respond.send(answer).await;
            }
        }
    });
    sender
        .send_frame(&receiver_party, b"a round message".to_vec())
        .await
        .unwrap();
    for expected in 1..=4u32 {
        let (from, bytes, count) = tokio::time::timeout(Duration::from_secs(20), seen.recv())
            .await
            .expect("the frame is sent again while the receiver is busy")
            .unwrap();
        assert_eq!(
            (from, bytes.as_slice(), count),
            (sender_party, &b"a round message"[..], expected)
        );
    }
    // Accepted: the sender stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        seen.try_recv().is_err(),
        "an accepted frame is not sent again"
    );
}
