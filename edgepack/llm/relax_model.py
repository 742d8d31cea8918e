"""The language model as a Relax module over a contiguous KV cache [layers, 2, max_seq_len, kv_heads, head_dim].

Functions (weights last, in `param_names` order):
  prefill(input_ids int32[n], cache, *weights) -> logits float32[1, vocab] of the last prompt token;
      fills cache positions 0..n-1 in place.
  decode(input_ids int32[1], cache, start: int64, *weights) -> logits float32[1, vocab]; writes position `start`.
  main(input_ids int32[n], *weights) -> logits float32[n, vocab] of every position, from an empty cache
      (the golden check of both loaders).
  create_cache() -> a zeroed cache.
The loaders check start + n <= max_seq_len before every call: the kernels do not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepack.llm import dot_kernels, kernels
from edgepack.llm.config import LlmConfig
from edgepack.llm.weights import QuantScheme, matrix_names


@dataclass(frozen=True)
class ModelPlan:
    """What the module is built from: architecture, cache bound, weight precision, the target's fp32 vector
    lanes (the interleave of quantized weights, `weights.block_matrix`) and whether static single-row quantized
    matmuls (decode's) quantize their input row to int8 and run integer dot products (`dot_kernels`)."""

    config: LlmConfig
    max_seq_len: int
    scheme: QuantScheme | None = None
    lanes: int = 8
    integer_dot: bool = False

    @property
    def cache_shape(self) -> tuple[int, ...]:
        c = self.config
        return (c.num_layers, 2, self.max_seq_len, c.num_kv_heads, c.head_dim)


def weight_shapes(plan: ModelPlan, weights: dict[str, np.ndarray]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every weight the functions take, in order."""
    return [(name, tuple(array.shape), str(array.dtype)) for name, array in sorted(weights.items())]


class _Builder:
    """Emits one function's dataflow; `w(name)` is a weight parameter, `matrix(name)` its (q, scale) pair."""

    def __init__(self, bb, plan: ModelPlan, params: dict, inv_freq):
        self.bb, self.plan, self.c, self.params, self.inv_freq = bb, plan, plan.config, params, inv_freq
        self.quantized = set(matrix_names(plan.config)) if plan.scheme else set()

    def w(self, name: str):
        return self.params[name]

    def matrix(self, name: str):
        if name in self.quantized:
            return self.params[f"{name}.q"], self.params[f"{name}.scale"]
        return self.params[name], None

    def linear(self, x, name: str, out_features: int, bias: str | None = None):
        from tvm import relax

        q, scale = self.matrix(name)
        if scale is None:
            rows, columns = x.ty.shape.values
            gvar = self.bb.add_func(kernels.fp32_linear_function(int(columns), out_features, self.plan.lanes), "linear_fp32")
            y = self.bb.emit(relax.call_tir(gvar, [x, q], relax.TensorType((rows, out_features), "float32")))
        elif self.integer_dot(x):
            y = self.integer_linear(x, q, scale, out_features)
        else:
            rows, columns = x.ty.shape.values
            function = kernels.quantized_linear_function(int(columns), out_features, self.plan.scheme, self.plan.lanes)
            gvar = self.bb.add_func(function, f"linear_{self.plan.scheme.name}")
            y = self.bb.emit(relax.call_tir(gvar, [x, q, scale], relax.TensorType((rows, out_features), "float32")))
        if bias is not None and bias in self.params:
            y = self.bb.emit(relax.op.add(y, self.w(bias)))
        return y

    def integer_dot(self, x) -> bool:
        """Whether x [rows, in] goes through the integer kernels: the plan asks for them and x is one static row."""
        from tvm import tirx as tir

        rows, columns = x.ty.shape.values
        return self.plan.integer_dot and isinstance(rows, tir.IntImm) and int(rows) == 1 and dot_kernels.unsupported(
            int(columns), self.plan.scheme, self.plan.lanes, "avx512_vnni") is None

    def integer_linear(self, x, q, scale, out_features: int):
        """x quantized to int8 per weight group (`dot_kernels.quantize_rows_function`), then the vpdpbusd kernel."""
        from tvm import relax

        scheme, (rows, columns) = self.plan.scheme, (int(v) for v in x.ty.shape.values)
        groups = columns // scheme.group_for(columns)
        quantize = self.bb.add_func(dot_kernels.quantize_rows_function(rows, columns, scheme), f"quantize_rows_{scheme.name}")
        parts = self.bb.emit(relax.call_tir(quantize, [x], [relax.TensorType((rows, columns), "int8"),
                                                             relax.TensorType((rows, groups), "float32"),
                                                             relax.TensorType((rows, groups), "int32")]))
        linear = self.bb.add_func(dot_kernels.integer_linear_function(rows, columns, out_features, scheme),
                                  f"linear_{scheme.name}_dot")
        inputs = [self.bb.emit(relax.TupleGetItem(parts, i)) for i in range(3)]
        return self.bb.emit(relax.call_tir(linear, [*inputs, q, scale], relax.TensorType((rows, out_features), "float32")))

    def norm(self, x, prefix: str):
        from tvm import relax

        if self.c.norm == "rms":
            return self.bb.emit(relax.op.nn.rms_norm(x, self.w(prefix + ".weight"), axes=[-1], epsilon=self.c.norm_eps))
        return self.bb.emit(relax.op.nn.layer_norm(x, self.w(prefix + ".weight"), self.w(prefix + ".bias"), axes=[-1],
                                                   epsilon=self.c.norm_eps))

    def forward(self, ids, cache, start, n, all_logits: bool):
        """The decoder over n new tokens at positions start..; returns (logits, cache)."""
        from tvm import relax, tirx as tir

        bb, c, scheme = self.bb, self.c, self.plan.scheme
        q, scale = self.matrix("embed")
        embed_scheme = scheme if scale is not None else None
        x = bb.emit_te(lambda ids, q, s=None: kernels.gather_rows(ids, q, s, embed_scheme, c.hidden_size),
                       *((ids, q) if scale is None else (ids, q, scale)), primfunc_name_hint="embed")
        if c.rope_theta is None:
            pos = bb.emit_te(lambda table, s: kernels.positions(table, s, n), self.w("pos_embed"), start, primfunc_name_hint="pos_embed")
            x = bb.emit(relax.op.add(x, pos))
        q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        write_kv = bb.add_func(kernels.write_kv_function(*self.plan.cache_shape[:1], self.plan.max_seq_len, c.num_kv_heads,
                                                         c.head_dim), "write_kv")
        cache_info = relax.TensorType(self.plan.cache_shape, "float32")
        for layer in range(c.num_layers):
            p = f"layers.{layer}."
            h = self.norm(x, p + "norm1")
            qkv = self.linear(h, p + "qkv.weight", q_size + 2 * kv_size, p + "qkv.bias")
            parts = bb.emit(relax.op.split(qkv, [q_size, q_size + kv_size], axis=1))
            query = bb.emit(relax.op.reshape(bb.emit(relax.TupleGetItem(parts, 0)), (n, c.num_heads, c.head_dim)))
            key = bb.emit(relax.op.reshape(bb.emit(relax.TupleGetItem(parts, 1)), (n, c.num_kv_heads, c.head_dim)))
            value = bb.emit(relax.op.reshape(bb.emit(relax.TupleGetItem(parts, 2)), (n, c.num_kv_heads, c.head_dim)))
            if c.rope_theta is not None:
                query = bb.emit_te(lambda t, f, s: kernels.rotary(t, f, s), query, self.inv_freq, start, primfunc_name_hint="rotary")
                key = bb.emit_te(lambda t, f, s: kernels.rotary(t, f, s), key, self.inv_freq, start, primfunc_name_hint="rotary")
            cache = bb.emit(relax.op.call_tir_inplace(
                write_kv, relax.Tuple([cache, key, value, tir.IntImm("int64", layer), start]), [0], cache_info))
            if isinstance(n, tir.IntImm) and int(n) == 1:  # decode
                attend = bb.add_func(kernels.decode_attention_function(self.plan.cache_shape, c.num_heads, self.plan.lanes),
                                     "decode_attention")
                attended = bb.emit(relax.call_tir(attend, relax.Tuple([query, cache, tir.IntImm("int64", layer), start]),
                                                  relax.TensorType((n, q_size), "float32")))
            else:
                attended = bb.emit_te(lambda t, kv, s, layer=layer: kernels.attention(t, kv, layer, s, c.num_kv_heads), query, cache,
                                      start, primfunc_name_hint="attention")
            x = bb.emit(relax.op.add(x, self.linear(attended, p + "o.weight", c.hidden_size, p + "o.bias")))
            h = self.norm(x, p + "norm2")
            if c.family == "gpt2":
                up = self.linear(h, p + "fc.weight", c.intermediate_size, p + "fc.bias")
                mlp = self.linear(bb.emit(relax.op.nn.gelu_tanh(up)), p + "proj.weight", c.hidden_size, p + "proj.bias")
            else:
                gate_up = self.linear(h, p + "gate_up.weight", 2 * c.intermediate_size)
                halves = bb.emit(relax.op.split(gate_up, 2, axis=1))
                gated = bb.emit(relax.op.multiply(bb.emit(relax.op.nn.silu(bb.emit(relax.TupleGetItem(halves, 0)))),
                                                  bb.emit(relax.TupleGetItem(halves, 1))))
                mlp = self.linear(gated, p + "down.weight", c.hidden_size)
            x = bb.emit(relax.op.add(x, mlp))
        if not all_logits:
            x = bb.emit(relax.op.strided_slice(x, axes=[0], begin=[n - 1], end=[n]))
        x = self.norm(x, "final_norm")
        logits = self.linear(x, "embed" if c.tie_embeddings else "lm_head", c.vocab_size)
        return logits, cache


def build_module(plan: ModelPlan, weights: dict[str, np.ndarray]):
    """The Relax IRModule with prefill, decode, main and create_cache; weights are parameters (not constants)."""
    from tvm import relax, tirx as tir

    bb = relax.BlockBuilder()
    shapes = weight_shapes(plan, weights)
    inv_freq = None
    if plan.config.rope_theta is not None:
        inv_freq = relax.const(kernels.inverse_frequencies(plan.config.head_dim, plan.config.rope_theta))
    cache_info = relax.TensorType(plan.cache_shape, "float32")

    def weight_vars():
        return {name: relax.Var(name, relax.TensorType(shape, dtype)) for name, shape, dtype in shapes}

    for function in ("prefill", "decode", "main"):
        n = tir.IntImm("int64", 1) if function == "decode" else tir.Var("n", "int64")
        ids = relax.Var("input_ids", relax.TensorType((n,), "int32"))
        params = weight_vars()
        inputs = [ids]
        if function == "main":
            cache, start = None, tir.IntImm("int64", 0)
        else:
            cache = relax.Var("cache", cache_info)
            inputs.append(cache)
            start = tir.IntImm("int64", 0)
            if function == "decode":
                start = tir.Var("start", "int64")
                inputs.append(start)
        with bb.function(function, [*inputs, *params.values()], attrs={"num_input": len(inputs)}):
            with bb.dataflow():
                if cache is None:
                    cache = bb.emit(relax.op.zeros(plan.cache_shape, "float32"))
                logits, cache = _Builder(bb, plan, params, inv_freq).forward(ids, cache, start, n, function == "main")
                result = bb.emit_output(logits)
            bb.emit_func_output(result)
    with bb.function("create_cache", []):
        with bb.dataflow():
            result = bb.emit_output(relax.op.zeros(plan.cache_shape, "float32"))
        bb.emit_func_output(result)
    return bb.get()
