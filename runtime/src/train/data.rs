//! Training data: tokenizers and deterministic batching.
//!
//! Text becomes token ids through a [`Tokenizer`]: bytes by default (ids 0..256, no files needed),
//! or a HF `tokenizer.json` through the `tokenizers` crate (cargo feature `hf-tokenizers`).
//!
//! A [`Batcher`] cuts the token stream into windows of `seq` tokens and hands out `batch` of them
//! per micro-batch. Epoch `e` uses the windows starting at `offset_e + k·seq` (a random offset in
//! `[0, seq)`, so window boundaries move between epochs) in a shuffled order; both come from a
//! generator seeded by `(seed, e)`. The position in that order is the whole state of the batcher
//! ([`Cursor`]), so a checkpoint stores two integers and a resumed run sees the same batches.

use std::path::Path;

use super::TrainError;
use super::rng::SplitMix64;

/// Turns text into token ids and back.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// Each byte of the UTF-8 text is one token (vocabulary 256).
    Bytes,
    /// A HF `tokenizer.json`.
    #[cfg(feature = "hf-tokenizers")]
    Hf(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`.
    #[cfg(feature = "hf-tokenizers")]
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer::Hf(Box::new(tokenizer)))
    }

    /// Loads a HF `tokenizer.json`: this build has no `hf-tokenizers` feature, so it is an error.
    #[cfg(not(feature = "hf-tokenizers"))]
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        Err(TrainError::Tokenizer(format!(
            "{}: this build of modelspec has no tokenizer.json support (cargo feature `hf-tokenizers`)",
            path.display()
        )))
    }

    /// How checkpoints record this tokenizer: `bytes` or `tokenizer.json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Bytes => "bytes",
            #[cfg(feature = "hf-tokenizers")]
            Tokenizer::Hf(_) => "tokenizer.json",
        }
    }

    /// Number of distinct ids the tokenizer can produce.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            #[cfg(feature = "hf-tokenizers")]
            Tokenizer::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TrainError> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            #[cfg(feature = "hf-tokenizers")]
            Tokenizer::Hf(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TrainError::Tokenizer(e.to_string())),
        }
    }

    /// Text of `ids`; bytes that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TrainError> {
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .map(|&id| u8::try_from(id).unwrap_or(b'?'))
                    .collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            #[cfg(feature = "hf-tokenizers")]
            Tokenizer::Hf(t) => t
                .decode(ids, false)
                .map_err(|e| TrainError::Tokenizer(e.to_string())),
        }
    }
}

/// The entropy, in nats, of the tokens' unigram distribution: the loss of the best model that
/// knows only token frequencies.
pub fn unigram_entropy(tokens: &[u32]) -> f64 {
    let mut counts = std::collections::BTreeMap::<u32, u64>::new();
    for &t in tokens {
        *counts.entry(t).or_default() += 1;
    }
    let n = tokens.len() as f64;
    counts
        .values()
        .map(|&c| c as f64 / n)
        .map(|p| -p * p.ln())
        .sum()
}

/// Splits off the last `fraction` of `tokens` (at least `min_tail` tokens when there are enough)
/// as held-out validation data: `(train, validation)`.
pub fn split_validation(tokens: &[u32], fraction: f64, min_tail: usize) -> (&[u32], &[u32]) {
    let tail = ((tokens.len() as f64 * fraction) as usize).max(min_tail);
    if tail >= tokens.len() / 2 {
        return (tokens, &[]);
    }
    tokens.split_at(tokens.len() - tail)
}

/// Where a [`Batcher`] is: the epoch and the next window's index in that epoch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Epochs completed.
    pub epoch: u64,
    /// Windows of this epoch already handed out.
    pub index: u64,
}

/// Deterministic shuffled batches of fixed-length windows (see the module docs).
#[derive(Debug, Clone)]
pub struct Batcher {
    tokens: Vec<u32>,
    batch: usize,
    seq: usize,
    seed: u64,
    cursor: Cursor,
    /// Window starts of `cursor.epoch`, in the order they are handed out.
    order: Vec<usize>,
}

impl Batcher {
    /// A batcher at the start of epoch 0. Needs at least one window: `tokens.len() >= seq`.
    pub fn new(tokens: Vec<u32>, batch: usize, seq: usize, seed: u64) -> Result<Self, TrainError> {
        Self::at(tokens, batch, seq, seed, Cursor::default())
    }

    /// A batcher positioned at `cursor` (as a checkpoint recorded it).
    pub fn at(
        tokens: Vec<u32>,
        batch: usize,
        seq: usize,
        seed: u64,
        cursor: Cursor,
    ) -> Result<Self, TrainError> {
        if batch == 0 || seq < 2 || tokens.len() < 2 * seq {
            return Err(TrainError::TooLittleData {
                tokens: tokens.len(),
                seq,
                batch,
            });
        }
        let mut batcher = Self {
            tokens,
            batch,
            seq,
            seed,
            cursor,
            order: Vec::new(),
        };
        batcher.order = batcher.epoch_order(cursor.epoch);
        if cursor.index > batcher.order.len() as u64 {
            return Err(TrainError::Checkpoint(format!(
                "data cursor {} is past the {} windows of an epoch (was the data or --seq changed?)",
                cursor.index,
                batcher.order.len()
            )));
        }
        Ok(batcher)
    }

    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = SplitMix64::new(self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let offset = rng.below(self.seq as u64) as usize;
        let mut starts: Vec<usize> = (offset..=self.tokens.len() - self.seq)
            .step_by(self.seq)
            .collect();
        rng.shuffle(&mut starts);
        starts
    }

    /// The position of the next window.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Tokens per window.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Windows per micro-batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The next micro-batch: `batch` windows of `seq` tokens, row-major `[batch, seq]`.
    pub fn next_batch(&mut self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.batch * self.seq);
        for _ in 0..self.batch {
            if self.cursor.index as usize >= self.order.len() {
                self.cursor = Cursor {
                    epoch: self.cursor.epoch + 1,
                    index: 0,
                };
                self.order = self.epoch_order(self.cursor.epoch);
            }
            let start = self.order[self.cursor.index as usize];
            out.extend_from_slice(&self.tokens[start..start + self.seq]);
            self.cursor.index += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let t = Tokenizer::Bytes;
        let ids = t.encode("Mr. Darcy — é").unwrap();
        assert_eq!(ids[0], u32::from(b'M'));
        assert_eq!(t.decode(&ids).unwrap(), "Mr. Darcy — é");
        assert_eq!(t.vocab_size(), 256);
    }

    #[cfg(feature = "hf-tokenizers")]
    #[test]
    fn tokenizer_json_through_the_tokenizers_crate() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"the":1,"cat":2,"sat":3},"unk_token":"[UNK]"}}"#;
        let dir = std::env::temp_dir().join(format!("modelspec-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        let t = Tokenizer::from_file(&path).unwrap();
        assert_eq!(t.kind(), "tokenizer.json");
        assert_eq!(t.vocab_size(), 4);
        assert_eq!(t.encode("the cat sat on").unwrap(), vec![1, 2, 3, 0]);
        assert_eq!(t.decode(&[1, 2]).unwrap(), "the cat");
        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(
            Tokenizer::from_file(&path),
            Err(TrainError::Tokenizer(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entropy_of_known_distributions() {
        assert_eq!(unigram_entropy(&[5, 5, 5]), 0.0);
        let two = unigram_entropy(&[1, 2, 1, 2]);
        assert!((two - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn batches_are_windows_of_the_stream_and_deterministic() {
        let tokens: Vec<u32> = (0..1000).collect();
        let mut a = Batcher::new(tokens.clone(), 3, 10, 9).unwrap();
        let mut b = Batcher::new(tokens, 3, 10, 9).unwrap();
        for _ in 0..200 {
            let batch = a.next_batch();
            assert_eq!(batch, b.next_batch());
            assert_eq!(batch.len(), 30);
            for row in batch.chunks(10) {
                assert!(row.windows(2).all(|w| w[1] == w[0] + 1), "{row:?}");
            }
        }
        assert!(
            a.cursor().epoch >= 5,
            "several epochs went by: {:?}",
            a.cursor()
        );
    }

    #[test]
    fn an_epoch_visits_every_window_once() {
        let tokens: Vec<u32> = (0..100).collect();
        let mut b = Batcher::new(tokens, 1, 10, 1).unwrap();
        let windows = b.order.len();
        let mut firsts: Vec<u32> = (0..windows).map(|_| b.next_batch()[0]).collect();
        assert_eq!(
            b.cursor(),
            Cursor {
                epoch: 0,
                index: windows as u64
            }
        );
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts.len(), windows);
        assert!(firsts.windows(2).all(|w| w[1] - w[0] == 10));
    }

    #[test]
    fn resuming_at_a_cursor_continues_the_stream() {
        let tokens: Vec<u32> = (0..500).collect();
        let mut straight = Batcher::new(tokens.clone(), 4, 8, 5).unwrap();
        for _ in 0..37 {
            straight.next_batch();
        }
        let mut resumed = Batcher::at(tokens, 4, 8, 5, straight.cursor()).unwrap();
        for _ in 0..50 {
            assert_eq!(straight.next_batch(), resumed.next_batch());
        }
    }

    #[test]
    fn too_little_data_is_an_error() {
        let err = Batcher::new(vec![1, 2, 3], 1, 8, 0).unwrap_err();
        assert!(matches!(err, TrainError::TooLittleData { .. }), "{err}");
    }

    #[test]
    fn validation_split_takes_the_tail() {
        let tokens: Vec<u32> = (0..100).collect();
        let (train, val) = split_validation(&tokens, 0.1, 5);
        assert_eq!((train.len(), val.len()), (90, 10));
        assert_eq!(val[0], 90);
        let (train, val) = split_validation(&tokens[..8], 0.1, 5);
        assert_eq!((train.len(), val.len()), (8, 0));
    }
}
