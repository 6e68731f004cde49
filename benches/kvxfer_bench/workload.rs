//! Transfer shapes: model presets, the `staging` and `paged` KV layouts and
//! the raw descriptor sweep. Every case is a list of (local offset, remote
//! offset, length) inside a pool of `pool` bytes on each side, built the same
//! way (deterministically) in every process that needs it.

use kvxfer::harness::XorShift as Rng;
use std::fmt::Write;

/// KV geometry of a model (bf16). MLA models keep one latent per layer,
/// replicated on every TP rank; GQA models split KV heads across ranks.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub name: &'static str,
    pub layers: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    /// Latent width per token and layer for MLA (512 latent + 64 rope).
    pub mla_dim: Option<u64>,
}

pub const MODELS: [Model; 3] = [
    Model { name: "llama3-8b", layers: 32, kv_heads: 8, head_dim: 128, mla_dim: None },
    Model { name: "llama3-70b", layers: 80, kv_heads: 8, head_dim: 128, mla_dim: None },
    Model { name: "deepseek-v3", layers: 61, kv_heads: 0, head_dim: 0, mla_dim: Some(576) },
];

const BF16: u64 = 2;

impl Model {
    pub fn find(name: &str) -> Option<Model> {
        MODELS.iter().copied().find(|m| m.name.eq_ignore_ascii_case(name))
    }

    /// Separately addressed regions per rank: one per layer and K/V (one per layer for MLA).
    pub fn regions(&self) -> u64 {
        if self.mla_dim.is_some() {
            self.layers
        } else {
            self.layers * 2
        }
    }

    /// Bytes of one region's block (K or V of one layer, `tokens` tokens) on one TP rank.
    /// More ranks than KV heads replicate heads, as engines do.
    pub fn block_bytes(&self, tp: u64, tokens: u64) -> u64 {
        match self.mla_dim {
            Some(dim) => tokens * dim * BF16,
            None => tokens * (self.kv_heads / tp).max(1) * self.head_dim * BF16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "READ",
            Op::Write => "WRITE",
        }
    }
}

/// One benchmark case: a request of `pieces` (local offset, remote offset, len).
#[derive(Clone, Debug)]
pub struct Case {
    pub id: String,
    pub layout: &'static str,
    pub model: String,
    pub op: Op,
    /// Size of a single descriptor (the largest, for the staging layout).
    pub desc_size: u64,
    pub pieces: Vec<(u64, u64, u64)>,
}

impl Case {
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.2).sum()
    }
}

/// How a request's blocks sit in each side's paged pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// Blocks scattered at random on each side (no two neighbours on both sides).
    Random,
    /// Block j at slot j on both sides (a fresh pool): every region collapses to one run.
    Contiguous,
}

impl Blocks {
    pub fn parse(s: &str) -> Option<Blocks> {
        match s {
            "random" => Some(Blocks::Random),
            "contiguous" => Some(Blocks::Contiguous),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Blocks::Random => "random",
            Blocks::Contiguous => "contiguous",
        }
    }
}

pub struct KvShape {
    pub model: Model,
    pub tp: u64,
    pub tokens_per_block: u64,
    pub prompt: u64,
}

impl KvShape {
    fn label(&self) -> String {
        let mut s = format!("{}-tp{}-tpb{}-", self.model.name, self.tp, self.tokens_per_block);
        if self.prompt % 1024 == 0 {
            let _ = write!(s, "{}k", self.prompt / 1024);
        } else {
            let _ = write!(s, "{}", self.prompt);
        }
        s
    }

    fn blocks(&self) -> u64 {
        self.prompt.div_ceil(self.tokens_per_block)
    }

    /// KV bytes of the prompt on one rank.
    pub fn bytes(&self) -> u64 {
        self.model.regions() * self.blocks() * self.model.block_bytes(self.tp, self.tokens_per_block)
    }

    /// vLLM-style: one descriptor per region x block, region-major. Each side's
    /// pool holds `regions` equal regions of whole blocks; a request larger
    /// than the pool reuses slots (the bandwidth is what is measured).
    pub fn paged(&self, op: Op, pool: u64, blocks: Blocks, seed: u64) -> Option<Case> {
        let block = self.model.block_bytes(self.tp, self.tokens_per_block);
        let regions = self.model.regions();
        let slots = pool / (regions * block);
        if slots == 0 {
            return None;
        }
        let region_size = slots * block;
        let n = self.blocks();
        let mut rng = Rng::new(seed);
        let table = |rng: &mut Rng| -> Vec<u64> {
            match blocks {
                Blocks::Contiguous => (0..n).map(|j| j % slots).collect(),
                Blocks::Random => {
                    let perm = rng.permutation(slots);
                    (0..n).map(|j| perm[(j % slots) as usize]).collect()
                }
            }
        };
        let (local, remote) = (table(&mut rng), table(&mut rng));
        let mut pieces = Vec::with_capacity((regions * n) as usize);
        for r in 0..regions {
            for j in 0..n as usize {
                pieces.push((r * region_size + local[j] * block, r * region_size + remote[j] * block, block));
            }
        }
        Some(Case {
            id: format!("paged-{}-{}-{}", blocks.name(), self.label(), op.name()),
            layout: "paged",
            model: self.label(),
            op,
            desc_size: block,
            pieces,
        })
    }

    /// TensorRT-LLM-style: the rank's KV gathered into one contiguous staging
    /// buffer, sent as one descriptor (in pool-sized pieces when larger).
    pub fn staging(&self, op: Op, pool: u64) -> Case {
        let total = self.bytes();
        let chunk = total.min(pool);
        let pieces: Vec<_> = (0..total.div_ceil(chunk)).map(|i| (0, 0, chunk.min(total - i * chunk))).collect();
        Case {
            id: format!("staging-{}-{}", self.label(), op.name()),
            layout: "staging",
            model: self.label(),
            op,
            desc_size: chunk,
            pieces,
        }
    }
}

/// Raw sweep case: `count` descriptors of `size` bytes, local contiguous and
/// remote in reverse order, so none can be merged (the per-descriptor cost
/// is measured, not the coalescer).
pub fn raw(size: u64, count: u64, op: Op, pool: u64) -> Option<Case> {
    if size.checked_mul(count)? > pool {
        return None;
    }
    let pieces = (0..count).map(|i| (i * size, (count - 1 - i) * size, size)).collect();
    Some(Case {
        id: format!("raw-{}x{}-{}", human(size), count, op.name()),
        layout: "raw",
        model: "-".into(),
        op,
        desc_size: size,
        pieces,
    })
}

/// "4KiB", "1MiB", "64MiB".
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{}GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

/// Parses "4096", "4k", "4KiB", "64M", "1g".
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_match_the_landscape_table() {
        let m8 = Model::find("llama3-8b").unwrap();
        // 128 KiB per token whole model; 16 KiB per rank at TP8.
        assert_eq!(KvShape { model: m8, tp: 1, tokens_per_block: 16, prompt: 1 }.bytes(), 64 * 2 * 1024 * 16);
        let s = KvShape { model: m8, tp: 1, tokens_per_block: 16, prompt: 1024 };
        let c = s.paged(Op::Write, 1 << 30, Blocks::Random, 1).unwrap();
        assert_eq!((c.pieces.len(), c.desc_size, c.bytes()), (4096, 32 << 10, 128 << 20));
        let ds = KvShape { model: Model::find("deepseek-v3").unwrap(), tp: 8, tokens_per_block: 16, prompt: 1024 };
        assert_eq!(ds.bytes(), 70_272 * 1024);
        let l70 = KvShape { model: Model::find("llama3-70b").unwrap(), tp: 8, tokens_per_block: 16, prompt: 1024 };
        assert_eq!(l70.bytes(), 40 << 20);
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(human(64 << 20), "64MiB");
    }
}
