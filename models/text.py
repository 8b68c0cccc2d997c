"""Text classification: a small transformer encoder (Vaswani et al., 2017), two inputs as a
tokenizer gives them, int64 token ids and an attention mask (1 for tokens, 0 for padding), both
(N, 32); two layers, 4 heads, width 128, vocabulary 1,000; the first token's state of the last
layer (BERT's [CLS] reading; a masked mean would divide, and int8 TFLite's DIV fails on a zero
denominator), then 2 classes. Attention is written with plain Linear layers and matmuls (no fused
kernel), which every exporter and quantizer handles; the queries are scaled by a multiplication
(onnx2tf's accuracy correction fails on the Div of attention scores by a constant). No offline
weights: random weights."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from edge.models.spec import ModelSpec, register_model
from edge.tensors import InputSpec, Mask, OutputSpec, Tokens

VOCAB, LENGTH, WIDTH, HEADS, LAYERS = 1000, 32, 128, 4, 2
MASKED = -1e4  # added to the scores of padding: finite, so softmax stays finite in every precision


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.dim = heads, width // heads
        self.scale = 1.0 / math.sqrt(self.dim)
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = (f(x).reshape(n, t, self.heads, self.dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = torch.matmul(q * self.scale, k.transpose(2, 3)) + bias
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(y.transpose(1, 2).reshape(n, t, -1))


class Layer(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.norm1 = nn.LayerNorm(width)
        # GELU's tanh form: TFLite has no Erf kernel (the exact form's), while the tanh form is a builtin
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.ff(x))


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = VOCAB, length: int = LENGTH, num_classes: int = 2):
        super().__init__()
        self.tokens = nn.Embedding(vocab, WIDTH)
        self.positions = nn.Embedding(length, WIDTH)
        self.layers = nn.ModuleList(Layer(WIDTH, HEADS) for _ in range(LAYERS))
        self.fc = nn.Linear(WIDTH, num_classes)
        self.register_buffer("position_ids", torch.arange(length)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bias = ((1.0 - attention_mask.to(torch.float32)) * MASKED)[:, None, None, :]
        x = self.tokens(input_ids) + self.positions(self.position_ids)
        for layer in self.layers:
            x = layer(x, bias)
        return self.fc(x[:, 0])  # the first token's state, as BERT's classifier reads its [CLS] token


def build_text_classifier(*, input_shape: tuple[int, ...] = (1, LENGTH), num_classes: int = 2) -> nn.Module:
    return TextClassifier(VOCAB, input_shape[1], num_classes)


register_model(ModelSpec(
    name="text_transformer", family="text", builder=build_text_classifier,
    inputs=(InputSpec("input_ids", (1, LENGTH), "int64", None, Tokens(VOCAB)),
            InputSpec("attention_mask", (1, LENGTH), "int64", None, Mask())),
    outputs=(OutputSpec("logits", "classification", (1, 2)),),
    num_classes=2, min_input_size=1, resizable=False, labels=lambda: ["negative", "positive"],
    description="a 2-layer transformer text classifier: token ids + attention mask (random weights)",
))
