//! Property tests for the vsock protocol's codec, hand-rolled over a seeded RNG (the seed is printed
//! on failure so a case can be replayed): every message round-trips; no input — random bytes,
//! truncated or mutated frames, forged lengths — panics the decoder or makes it allocate beyond
//! the frame; the async reader agrees with the slice decoder however the bytes are chunked.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use voltrun_agent::protocol::{
    self, MAX_FRAME_BYTES, Message, ProtocolError, StartSpec, Stream, decode, decode_body, encode,
};

const CASES: usize = 2_000;

fn seed() -> u64 {
    std::env::var("CODEC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().next_u64())
}

fn text(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..40);
    (0..len)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random_range('a'..='z'),
            1 => rng.random_range('\u{80}'..='\u{7ff}'),
            2 => ['\n', '"', '\\', '\0', ' '][rng.random_range(0..5)],
            _ => char::from_u32(rng.random_range(0x1_0000..0x1_0fff)).unwrap_or('x'),
        })
        .collect()
}

fn bytes(rng: &mut StdRng) -> Vec<u8> {
    let len = if rng.random_bool(0.05) {
        rng.random_range(0..200_000)
    } else {
        rng.random_range(0..64)
    };
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn message(rng: &mut StdRng) -> Message {
    match rng.random_range(0..15) {
        0 => Message::Hello {
            agent_version: text(rng),
            pid1: rng.random(),
            runtime_ready: rng.random(),
        },
        1 => Message::Start(StartSpec {
            command: (0..rng.random_range(0..5)).map(|_| text(rng)).collect(),
            env: (0..rng.random_range(0..8))
                .map(|_| (text(rng), text(rng)))
                .collect(),
            cwd: text(rng),
            runtime_api_port: rng.random(),
            max_processes: rng.random(),
        }),
        2 => Message::Ready {
            init_ms: rng.random(),
        },
        3 => Message::InitError {
            error_type: text(rng),
            message: text(rng),
        },
        4 => Message::Invoke {
            request_id: text(rng),
            deadline_unix_ms: rng.random(),
            function_arn: text(rng),
            event: bytes(rng),
        },
        5 => Message::Response {
            request_id: text(rng),
            payload: bytes(rng),
        },
        6 => Message::Error {
            request_id: text(rng),
            error_type: text(rng),
            message: text(rng),
        },
        7 => Message::ResponseTooLarge {
            request_id: text(rng),
            size: rng.random(),
        },
        8 => Message::Log {
            stream: if rng.random() {
                Stream::Stdout
            } else {
                Stream::Stderr
            },
            unix_ms: rng.random(),
            line: text(rng),
        },
        9 => Message::Exited {
            status: text(rng),
            out_of_memory: rng.random(),
        },
        10 => Message::Detach,
        11 => Message::Resume {
            unix_ms: rng.random(),
        },
        12 => Message::Usage {
            memory_peak_bytes: rng.random(),
        },
        13 => Message::Clock {
            unix_ms: rng.random(),
        },
        _ => Message::Shutdown,
    }
}

#[test]
fn every_message_round_trips() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..CASES {
        let original = message(&mut rng);
        let frame = encode(&original).unwrap();
        let (decoded, used) = decode(&frame).unwrap_or_else(|e| {
            panic!("seed {seed} case {case}: {e} decoding {original:?}");
        });
        assert_eq!(decoded, original, "seed {seed} case {case}");
        assert_eq!(used, frame.len(), "seed {seed} case {case}");
    }
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..CASES * 10 {
        let mut input = vec![0u8; rng.random_range(0..128)];
        rng.fill_bytes(&mut input);
        // Mostly plausible headers, so that the body decoders are exercised too.
        if input.len() >= 6 && rng.random_bool(0.8) {
            let len = (input.len() - 4) as u32;
            input[..4].copy_from_slice(&len.to_be_bytes());
            input[4] = protocol::VERSION;
            input[5] = rng.random_range(0..14);
        }
        let _ = decode(&input);
        let _ = decode_body(&input);
    }
}

#[test]
fn truncated_and_mutated_frames_are_errors_not_panics() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..CASES / 4 {
        let frame = encode(&message(&mut rng)).unwrap();
        for cut in 0..frame.len().min(64) {
            assert!(
                decode(&frame[..cut]).is_err(),
                "seed {seed} case {case}: a frame cut at {cut} decoded"
            );
        }
        let mut mutated = frame.clone();
        let at = rng.random_range(0..mutated.len());
        mutated[at] ^= 1 << rng.random_range(0..8);
        // Any outcome but a panic is fine: a flipped bit may still be a valid, different message.
        let _ = decode(&mutated);
        // Bytes appended inside the frame are refused as trailing.
        let mut longer = frame[4..].to_vec();
        longer.push(0);
        assert_eq!(
            decode_body(&longer),
            Err(ProtocolError::TrailingBytes(1)),
            "seed {seed} case {case}"
        );
    }
}

#[test]
fn forged_lengths_are_refused_before_reading_the_body() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..CASES {
        let length: u32 = rng.random_range(MAX_FRAME_BYTES + 1..=u32::MAX);
        let mut input = length.to_be_bytes().to_vec();
        input.extend_from_slice(&[protocol::VERSION, 6]);
        assert_eq!(
            decode(&input),
            Err(ProtocolError::TooLarge(u64::from(length)))
        );
    }
    assert_eq!(decode(&[0, 0, 0, 0]), Err(ProtocolError::TooShort(0)));
}

/// Yields its bytes in random-sized pieces, as a socket may.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    rng: StdRng,
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let left = this.data.len() - this.at;
        let n = left.min(buf.remaining()).min(this.rng.random_range(1..=7));
        buf.put_slice(&this.data[this.at..this.at + n]);
        this.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn the_stream_reader_agrees_with_the_decoder_however_bytes_arrive() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let messages: Vec<Message> = (0..200).map(|_| message(&mut rng)).collect();
    let mut data = Vec::new();
    for m in &messages {
        data.extend(encode(m).unwrap());
    }
    // A frame cut short by the peer going away.
    let tail = encode(&Message::Shutdown).unwrap();
    data.extend_from_slice(&tail[..3]);
    let mut reader = Chunked {
        data,
        at: 0,
        rng: StdRng::seed_from_u64(seed ^ 1),
    };
    for (i, expected) in messages.iter().enumerate() {
        let got = protocol::read_message(&mut reader).await;
        assert_eq!(
            got.as_ref(),
            Ok(&Some(expected.clone())),
            "seed {seed} message {i}"
        );
    }
    assert_eq!(
        protocol::read_message(&mut reader).await,
        Err(ProtocolError::UnexpectedEof)
    );
    // A clean end between frames is not an error.
    let mut empty: &[u8] = &[];
    assert_eq!(protocol::read_message(&mut empty).await, Ok(None));
}
