"""Model shape presets: `tiny` for CPU runs, `small` (~25M) for one GPU, and the shapes of
Qwen2.5-0.5B/1.5B/3B. vocab_size 0 takes the tokenizer's."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=768, vocab_size=0,
                 max_positions=1024, rope_theta=1e4, tie_embeddings=True),
    "small": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, d_ff=1536, vocab_size=0,
                  max_positions=2048, rope_theta=1e4, tie_embeddings=True),
    "qwen2.5-0.5b": dict(d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, d_ff=4864,
                         vocab_size=151936, max_positions=32768, rope_theta=1e6,
                         tie_embeddings=True),
    "qwen2.5-1.5b": dict(d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, d_ff=8960,
                         vocab_size=151936, max_positions=32768, rope_theta=1e6,
                         tie_embeddings=True),
    "qwen2.5-3b": dict(d_model=2048, n_layers=36, n_heads=16, n_kv_heads=2, d_ff=11008,
                       vocab_size=151936, max_positions=32768, rope_theta=1e6,
                       tie_embeddings=True),
}
