"""The bad-input catalogue: every bad file or call a user can hand ferrotune, the exception it
must raise (type and a phrase of its message) or the state that must stay intact.

The catalogue is data (``CASES`` below, one ``Case`` per input); one parametrized test checks
each. Cases run in child processes (tests/bad_inputs_cases.py), a group of them per process to
keep the time down: a case that kills its interpreter (abort, segfault, out-of-memory kill)
fails with its signal instead of killing the test run; the group's remaining cases are then
re-run one per process so the crash is pinned on the case that caused it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_inputs_cases import Case  # noqa: E402

HELPER = Path(__file__).resolve().parent / "bad_inputs_cases.py"
FERRO = "FerrotuneError"


def C(id, code, exc, match=None, after=None, **kw):
    return Case(id, textwrap.dedent(code), exc, match, None if after is None else textwrap.dedent(after), **kw)


# ============================================================================== the catalogue

CASES = [
    # ---------------------------------------------------------------- model directories: files
    C("model/missing-directory", "ft.Model.from_pretrained(tmp / 'does-not-exist')", "FileNotFoundError", "does-not-exist"),
    C("model/missing-weights", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'model.safetensors').unlink()
        ft.Model.from_pretrained(d)""", "FileNotFoundError", r"model\.safetensors"),
    C("model/missing-config", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'config.json').unlink()
        ft.Model.from_pretrained(d)""", "FileNotFoundError", r"config\.json"),
    C("model/config-not-json", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'config.json').write_text('{not json')
        ft.Model.from_pretrained(d)""", "ConfigError", r"config\.json"),
    C("model/config-is-a-list", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'config.json').write_text('[1, 2]')
        ft.Model.from_pretrained(d)""", "ConfigError", r"config\.json"),
    C("model/path-is-config-file", "ft.Model.from_pretrained(FIX / 'gpt2_tiny_a' / 'config.json')",
      ("NotADirectoryError", "CheckpointError", "InputError"), r"config\.json"),
    C("model/path-is-safetensors-file", "ft.Model.from_pretrained(FIX / 'gpt2_tiny_a' / 'model.safetensors')",
      ("NotADirectoryError", "CheckpointError", "InputError"), r"model\.safetensors.*(directory|GGUF|gguf)"),
    C("model/from_config-not-a-mapping", "ft.Model.from_config('gpt2')", ("TypeError", "ConfigError"), r"config"),
    C("model/config-nan-value", "gpt2(attn_pdrop=float('nan'))", "ConfigError", "attn_pdrop"),
    C("model/config-layer_norm_epsilon-nan", "gpt2(layer_norm_epsilon=float('nan'))", "ConfigError", "layer_norm_epsilon"),
    C("model/config-layer_norm_epsilon-negative", "gpt2(layer_norm_epsilon=-1.0)", "ConfigError", "layer_norm_epsilon",
      why="today it loads and every logit is NaN"),
    C("model/config-dropout-out-of-range", "gpt2(resid_pdrop=1.5)", "ConfigError", "resid_pdrop"),
    C("model/llama-head_dim-odd", "ft.Model.from_config(llama_config(head_dim=7))", "ConfigError", "head_dim"),
    C("model/seqcls-num_labels-zero", "ft.Model.for_sequence_classification(FIX / 'gpt2_tiny_a', num_labels=0)",
      "ConfigError", "num_labels", why="today 0 is taken as 'not given' and a 2-label head is built"),
    C("model/seqcls-num_labels-huge", """
        limit_memory(1024); ft.Model.for_sequence_classification(FIX / 'gpt2_tiny_a', num_labels=10**12)""",
      "ConfigError", "num_labels", solo=True, timeout=30,
      why="today a Python dict of 10**12 labels is built (runs until memory runs out)"),
    C("model/config-unknown-model-type", """
        d = copy_fixture('gpt2_tiny_a'); edit_json(d / 'config.json', model_type='bert')
        ft.Model.from_pretrained(d)""", "ConfigError", "bert"),
    C("model/config-missing-n_embd", """
        d = copy_fixture('gpt2_tiny_a'); edit_json(d / 'config.json', n_embd=DROP)
        ft.Model.from_pretrained(d)""", "ConfigError", "n_embd"),
    C("model/config-n_embd-is-a-string", "gpt2(n_embd='32')", "ConfigError", "n_embd"),
    C("model/config-n_embd-negative", "gpt2(n_embd=-32)", "ConfigError", "n_embd"),
    C("model/config-n_head-zero", "gpt2(n_head=0)", "ConfigError", "n_head"),
    C("model/config-n_head-not-dividing", "gpt2(n_head=5)", "ConfigError", "divisible"),
    C("model/config-activation-unknown", "gpt2(activation_function='relu6')", "ConfigError", "activation_function"),
    # sizes that would ask for absurd allocations: refused before allocating, naming the key
    C("model/gpt2-vocab_size-1e12", "gpt2(vocab_size=10**12)", "ConfigError", "vocab_size"),
    C("model/gpt2-n_layer-1e9", "gpt2(n_layer=10**9)", "ConfigError", "n_layer"),
    C("model/gpt2-n_positions-1e15", "gpt2(n_positions=10**15)", "ConfigError", "n_positions"),
    C("model/gpt2-n_embd-1e9", "gpt2(n_embd=10**9, n_head=1)", "ConfigError", "n_embd"),
    C("model/gpt2-n_inner-2^62", "gpt2(n_inner=2**62)", "ConfigError", "n_inner"),
    C("model/gpt2-vocab_size-1e12-config-file", """
        d = copy_fixture('gpt2_tiny_a'); edit_json(d / 'config.json', vocab_size=10**12)
        ft.Model.from_pretrained(d)""", "ConfigError", "vocab_size"),
    C("model/llama-intermediate_size-huge", "ft.Model.from_config(llama_config(intermediate_size=2**40))",
      "ConfigError", "intermediate_size"),
    C("model/llama-num_hidden_layers-huge", "ft.Model.from_config(llama_config(num_hidden_layers=10**9))",
      "ConfigError", "num_hidden_layers"),
    C("model/llama-num_hidden_layers-huge-config-file", """
        d = copy_fixture('llama_tiny'); edit_json(d / 'config.json', num_hidden_layers=10**9)
        ft.Model.from_pretrained(d)""", "ConfigError", "num_hidden_layers"),
    C("model/llama-rope_theta-zero", """
        c = llama_config(rope_theta=0.0); c['rope_parameters'] = {'rope_theta': 0.0, 'rope_type': 'default'}
        ft.Model.from_config(c)""", "ConfigError", "rope_theta"),
    C("model/llama-rope-scaling-factor-zero", """
        c = llama_config()
        c['rope_parameters'] = {'rope_theta': 10000.0, 'rope_type': 'linear', 'factor': 0.0}
        c['rope_scaling'] = {'rope_type': 'linear', 'factor': 0.0}
        ft.Model.from_config(c)""", "ConfigError", "factor"),
    C("model/llama-kv-heads-not-dividing", "ft.Model.from_config(llama_config(num_key_value_heads=4))",
      "ConfigError", "num_key_value_heads"),
    C("model/mistral-sliding_window-zero", """
        c = json.loads((FIX / 'mistral_tiny' / 'config.json').read_text()); c['sliding_window'] = 0
        ft.Model.from_config(c)""", "ConfigError", "sliding_window"),
    # ---------------------------------------------------------------- safetensors files
    C("model/safetensors-empty", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'model.safetensors').write_bytes(b'')
        ft.Model.from_pretrained(d)""", "CheckpointError", r"model\.safetensors"),
    C("model/safetensors-truncated", """
        d = copy_fixture('gpt2_tiny_a'); p = d / 'model.safetensors'; p.write_bytes(p.read_bytes()[:-1000])
        ft.Model.from_pretrained(d)""", "CheckpointError", r"model\.safetensors"),
    C("model/safetensors-header-length-huge", """
        d = copy_fixture('gpt2_tiny_a'); p = d / 'model.safetensors'
        p.write_bytes((2**62).to_bytes(8, 'little') + p.read_bytes()[8:])
        ft.Model.from_pretrained(d)""", "CheckpointError", r"model\.safetensors"),
    C("model/safetensors-header-not-json", """
        d = copy_fixture('gpt2_tiny_a'); p = d / 'model.safetensors'
        p.write_bytes((16).to_bytes(8, 'little') + b'{"a": [1, 2,,]} ' + b'\\0' * 64)
        ft.Model.from_pretrained(d)""", "CheckpointError", r"model\.safetensors"),
    C("model/safetensors-offsets-past-end", """
        d = copy_fixture('gpt2_tiny_a')
        (d / 'model.safetensors').write_bytes(safetensors_bytes(
            {'transformer.wte.weight': {'dtype': 'F32', 'shape': [101, 48], 'data_offsets': [0, 101 * 48 * 4]}}, b'\\0' * 64))
        ft.Model.from_pretrained(d)""", "CheckpointError", r"model\.safetensors"),
    C("model/safetensors-offsets-wrap", """
        d = copy_fixture('gpt2_tiny_a')
        (d / 'model.safetensors').write_bytes(safetensors_bytes(
            {'transformer.wte.weight': {'dtype': 'F32', 'shape': [2**62, 4], 'data_offsets': [0, 2**63]}}, b'\\0' * 64))
        ft.Model.from_pretrained(d)""", "CheckpointError", r"model\.safetensors"),
    C("model/safetensors-unknown-dtype", """
        d = copy_fixture('gpt2_tiny_a')
        (d / 'model.safetensors').write_bytes(safetensors_bytes(
            {'transformer.wte.weight': {'dtype': 'Q9', 'shape': [2, 2], 'data_offsets': [0, 16]}}, b'\\0' * 16))
        ft.Model.from_pretrained(d)""", "CheckpointError", "Q9"),
    C("model/tensor-wrong-shape", """
        from ferrotune.io import load_safetensors, save_safetensors
        d = copy_fixture('gpt2_tiny_a'); t = load_safetensors(d / 'model.safetensors')
        t['transformer.h.0.attn.c_attn.weight'] = t['transformer.h.0.attn.c_attn.weight'][:, :10]
        save_safetensors(t, d / 'model.safetensors', {'format': 'pt'})
        ft.Model.from_pretrained(d)""", "ShapeError", r"transformer\.h\.0\.attn\.c_attn\.weight.*\[48, 144\].*\[48, 10\]"),
    C("model/tensor-missing", """
        from ferrotune.io import load_safetensors, save_safetensors
        d = copy_fixture('gpt2_tiny_a'); t = load_safetensors(d / 'model.safetensors')
        del t['transformer.ln_f.bias']
        save_safetensors(t, d / 'model.safetensors', {'format': 'pt'})
        ft.Model.from_pretrained(d)""", "CheckpointError", r"transformer\.ln_f\.bias"),
    C("model/tensor-integer-dtype", """
        from ferrotune.io import load_safetensors, save_safetensors
        d = copy_fixture('gpt2_tiny_a'); t = load_safetensors(d / 'model.safetensors')
        t['transformer.ln_f.bias'] = t['transformer.ln_f.bias'].astype(np.int64)
        save_safetensors(t, d / 'model.safetensors', {'format': 'pt'})
        ft.Model.from_pretrained(d)""", ("CheckpointError", "ShapeError", "InputError"), r"transformer\.ln_f\.bias"),
    # ---------------------------------------------------------------- sharded checkpoints
    C("model/shard-index-parent-path", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'model.safetensors').rename(tmp / 'x.safetensors')
        from ferrotune.io import load_safetensors
        names = load_safetensors(tmp / 'x.safetensors')
        (d / 'model.safetensors.index.json').write_text(json.dumps(
            {'metadata': {}, 'weight_map': {k: '../x.safetensors' for k in names}}))
        ft.Model.from_pretrained(d)""", "CheckpointError", r"\.\./x\.safetensors"),
    C("model/shard-index-absolute-path", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'model.safetensors').rename(tmp / 'abs.safetensors')
        from ferrotune.io import load_safetensors
        names = load_safetensors(tmp / 'abs.safetensors')
        (d / 'model.safetensors.index.json').write_text(json.dumps(
            {'metadata': {}, 'weight_map': {k: str(tmp / 'abs.safetensors') for k in names}}))
        ft.Model.from_pretrained(d)""", "CheckpointError", r"abs\.safetensors"),
    C("model/shard-index-not-json", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'model.safetensors').unlink()
        (d / 'model.safetensors.index.json').write_text('{"weight_map": ')
        ft.Model.from_pretrained(d)""", ("CheckpointError", "ConfigError"), r"model\.safetensors\.index\.json"),
    C("model/shard-index-missing-shard", """
        d = copy_fixture('gpt2_tiny_a'); (d / 'model.safetensors').unlink()
        (d / 'model.safetensors.index.json').write_text(json.dumps(
            {'metadata': {}, 'weight_map': {'transformer.wte.weight': 'model-00001-of-00002.safetensors'}}))
        ft.Model.from_pretrained(d)""", "FileNotFoundError", r"model-00001-of-00002"),
    # ---------------------------------------------------------------- model calls
    C("call/token-id-out-of-range", "x = ids(); x[1, 3] = 64; gpt2()(x)", "InputError", r"token id 64 at \[1, 3\]"),
    C("call/token-id-negative", "gpt2()([[1, -1]])", "InputError", "token id -1"),
    C("call/token-id-int64-max", "gpt2()(np.array([[2**63 - 1]]))", "InputError", "token id"),
    C("call/ids-non-integer-floats", "gpt2()(np.array([[0.5, 1.0]]))", "TypeError", "integers"),
    C("call/ids-strings", "gpt2()(np.array([['a', 'b']]))", "TypeError", "integers"),
    C("call/ids-3d", "gpt2()(np.zeros((1, 2, 3), dtype=np.int64))", "ValueError", r"input_ids.*shape"),
    C("call/ids-ragged", "gpt2()([[1, 2, 3], [1]])", "ValueError", "ragged"),
    C("call/ids-empty", "gpt2()(np.zeros((1, 0), dtype=np.int64))", ("InputError", "ShapeError"), r"empty|0"),
    C("call/sequence-too-long", "gpt2()(np.zeros((1, 17), dtype=np.int64))", "InputError", "17 exceeds"),
    C("call/attention-mask-shape", "gpt2()(ids(), attention_mask=np.ones((2, 7)))", "ShapeError", "attention_mask"),
    C("call/attention-mask-values", "gpt2()(ids(), attention_mask=np.full((2, 8), 2))", "InputError", "0 or 1"),
    C("call/labels-out-of-range", "gpt2()(ids(), labels=np.full((2, 8), 70))", "InputError", "label 70"),
    C("call/labels-shape", "gpt2().forward_backward(ids(), labels=np.ones((1, 8)))", "ShapeError", "labels"),
    C("call/num_items_in_batch-nan", "gpt2().forward_backward(ids(), num_items_in_batch=float('nan'))",
      "InputError", "num_items_in_batch"),
    C("call/num_items_in_batch-inf", "gpt2().forward_backward(ids(), num_items_in_batch=float('inf'))",
      "InputError", "num_items_in_batch"),
    C("call/num_items_in_batch-zero", "gpt2().forward_backward(ids(), num_items_in_batch=0)",
      "InputError", "num_items_in_batch"),
    C("call/num_items_in_batch-negative", "gpt2().forward_backward(ids(), num_items_in_batch=-3)",
      "InputError", "num_items_in_batch"),
    C("call/load_state_dict-wrong-shape-intact", """
        m = gpt2(); before = m.state_dict(); sd = gpt2().state_dict()
        sd['transformer.ln_f.bias'] = np.zeros(5)
        m.load_state_dict(sd)""", "ShapeError", r"transformer\.ln_f\.bias.*\[32\].*\[5\]", after="""
        after = m.state_dict()
        assert all(np.array_equal(before[k], after[k]) for k in before), 'a failed load changed weights'
        assert m(ids()).logits.shape == (2, 8, 64)"""),
    C("call/load_state_dict-unknown-key", "gpt2().load_state_dict({'nope': np.zeros(3)})", "CheckpointError", "nope"),
    C("call/load_state_dict-not-numbers", "gpt2().load_state_dict({'transformer.ln_f.bias': 'abc'})",
      ("InputError", "TypeError", "ShapeError"), r"transformer\.ln_f\.bias"),
    C("call/set_rng_state-negative", "gpt2().set_rng_state(-1)", ("InputError", "ValueError"), "state"),
    C("call/adamw-load_state_dict-incomplete", "ft.AdamW(gpt2()).load_state_dict({'step': 3})",
      ("CheckpointError", "InputError"), "exp_avg"),
    C("call/lora-r-zero", "ft.get_peft_model(gpt2(), ft.LoraConfig(r=0, target_modules=['c_attn']))", "ConfigError", r"\br\b"),
    C("call/lora-alpha-nan", "ft.get_peft_model(gpt2(), ft.LoraConfig(r=4, lora_alpha=float('nan'), target_modules=['c_attn']))",
      "ConfigError", "lora_alpha"),
    C("call/lora-unknown-target", "ft.get_peft_model(gpt2(), ft.LoraConfig(r=4, target_modules=['nope']))", "InputError", "nope"),
    C("call/peft-adapter-config-not-json", """
        d = copy_fixture('lora_gpt2'); (d / 'adapter_config.json').write_text('{')
        ft.PeftModel.from_pretrained(ft.Model.from_pretrained(FIX / 'gpt2_tiny_a'), d)""",
      ("ConfigError", "CheckpointError"), r"adapter_config\.json"),
    C("call/peft-adapter-wrong-base", "ft.PeftModel.from_pretrained(gpt2(), FIX / 'lora_gpt2')", "ShapeError", r"lora_A"),
    C("call/clip_grad_norm-nan", "m = gpt2(); m.forward_backward(ids()); m.clip_grad_norm(float('nan'))",
      "InputError", "max_norm"),
    C("call/clip_grad_norm-negative", "m = gpt2(); m.forward_backward(ids()); m.clip_grad_norm(-1.0)",
      "InputError", "max_norm"),
    C("call/adamw-negative-lr", "ft.AdamW(gpt2(), lr=-1.0)", "InputError", "learning rate"),
    C("call/adamw-nan-lr", "ft.AdamW(gpt2(), lr=float('nan'))", "InputError", "learning rate"),
    C("call/adamw-beta-out-of-range", "ft.AdamW(gpt2(), betas=(0.9, 1.5))", "InputError", "beta"),
    C("call/freeze-unknown-name", "gpt2().freeze(['transformer.h.9.ln_1.bias'])", "InputError", r"h\.9"),
    C("call/resize-token-embeddings-zero", "gpt2().resize_token_embeddings(0)", "InputError", "new_num_tokens"),
    C("call/resize-token-embeddings-huge", "gpt2().resize_token_embeddings(10**12)", ("InputError", "ConfigError"),
      "vocab_size|new_num_tokens"),
    C("call/nan-weight-propagates-no-future-attention", """
        m = ft.Model.from_pretrained(FIX / 'llama_tiny'); m.eval()
        sd = m.state_dict(); w = sd['model.layers.0.self_attn.q_proj.weight'].copy(); w[0, 0] = np.nan
        m.load_state_dict({'model.layers.0.self_attn.q_proj.weight': w}, strict=False)
        a = np.array([[5, 7, 11, 13, 17, 19]]); b = a.copy(); b[0, -1] = 23
        la, lb = m(a).logits, m(b).logits
        assert np.isnan(la).any(), 'a NaN weight must show in the logits (as in transformers)'
        assert np.array_equal(la[0, :-1], lb[0, :-1], equal_nan=True), \\
            'changing the last token changed earlier positions: attention to future keys'
        assert np.array_equal(la[0, 0], lb[0, 0], equal_nan=True)""", None,
      why="a NaN in a weight propagates as in transformers and never turns into attention to future tokens"),
    C("call/two-threads-forward-and-forward", """
        import threading
        m = gpt2(n_positions=128); x = ids(4, 128); errors = []
        def work():
            try:
                for _ in range(20): m(x)
            except BaseException as e: errors.append(e)
        ts = [threading.Thread(target=work) for _ in range(2)]; [t.start() for t in ts]; [t.join() for t in ts]
        for e in errors:
            assert 'Already mutably borrowed' not in str(e), f'pyo3 borrow error reached the user: {e!r}'
            assert isinstance(e, ft.FerrotuneError) and 'another thread' in str(e), repr(e)
        assert m(x).logits.shape == (4, 128, 64)""", None, solo=True,
      why="two threads on one model: both succeed, or a FerrotuneError saying 'another thread'"),
    C("call/two-threads-forward-and-save", """
        import threading
        m = gpt2(n_positions=128); x = ids(4, 128); errors = []
        def fwd():
            try:
                for _ in range(20): m.forward_backward(x)
            except BaseException as e: errors.append(e)
        def save():
            try:
                for i in range(10): m.save_pretrained(tmp / f's{i}')
            except BaseException as e: errors.append(e)
        ts = [threading.Thread(target=fwd), threading.Thread(target=save)]
        [t.start() for t in ts]; [t.join() for t in ts]
        for e in errors:
            assert 'Already mutably borrowed' not in str(e), f'pyo3 borrow error reached the user: {e!r}'
            assert isinstance(e, ft.FerrotuneError) and 'another thread' in str(e), repr(e)
        for p in tmp.glob('s*'):
            ft.Model.from_pretrained(p)""", None, solo=True),
    # ---------------------------------------------------------------- GGUF
    C("gguf/baseline-loads", """
        p = write_llama_gguf(tmp / 'ok.gguf'); m = ft.Model.from_pretrained(p)
        assert m.config.hidden_size == 48; ft.Tokenizer.from_pretrained(p)""", None,
      why="the writer the other GGUF cases use makes a loadable file"),
    C("gguf/bad-magic", "_core.read_gguf_metadata(FIX / 'gguf_tiny' / 'expected.json')", "CheckpointError", "bad magic"),
    C("gguf/truncated-header", """
        p = tmp / 't.gguf'; p.write_bytes((FIX / 'gguf_tiny' / 'tiny.gguf').read_bytes()[:10])
        ft.Model.from_pretrained(p)""", "CheckpointError", "t.gguf"),
    C("gguf/truncated-data", """
        p = write_llama_gguf(tmp / 't.gguf'); p.write_bytes(p.read_bytes()[:-100])
        ft.Model.from_pretrained(p)""", "CheckpointError", "past the end"),
    C("gguf/version-1", "p = tmp / 'v1.gguf'; p.write_bytes(gguf_bytes([], version=1)); ft.Model.from_pretrained(p)",
      "CheckpointError", "version 1"),
    C("gguf/big-endian", "p = tmp / 'be.gguf'; p.write_bytes(b'GGUF' + (3).to_bytes(4, 'big') + bytes(16)); ft.Model.from_pretrained(p)",
      "CheckpointError", "big-endian"),
    C("gguf/tensor-count-huge", """
        p = tmp / 'n.gguf'; b = bytearray(gguf_bytes([('general.architecture', 'str', 'llama')]))
        b[8:16] = (2**62).to_bytes(8, 'little'); p.write_bytes(bytes(b)); ft.Model.from_pretrained(p)""",
      "CheckpointError", "tensor count"),
    C("gguf/string-length-huge", """
        p = tmp / 's.gguf'; b = bytearray(gguf_bytes([('general.architecture', 'str', 'llama')]))
        b[24:32] = (2**63).to_bytes(8, 'little'); p.write_bytes(bytes(b)); _core.read_gguf_metadata(p)""",
      "CheckpointError", "string length"),
    C("gguf/unknown-value-type", """
        p = tmp / 'u.gguf'; b = bytearray(gguf_bytes([('x', 'u32', 1)]))
        b[33:37] = (99).to_bytes(4, 'little'); p.write_bytes(bytes(b)); _core.read_gguf_metadata(p)""",
      "CheckpointError", "unknown metadata value type 99"),
    C("gguf/arrays-nested-deep", """
        v = ('u8', [1])
        for _ in range(12): v = ('arr', [v])
        p = tmp / 'a.gguf'; p.write_bytes(gguf_bytes([('deep', 'arr', v)])); _core.read_gguf_metadata(p)""",
      "CheckpointError", "nested"),
    C("gguf/alignment-not-power-of-two", """
        p = write_llama_gguf(tmp / 'al.gguf', extra_kvs=[('general.alignment', 'u32', 3)]); ft.Model.from_pretrained(p)""",
      "CheckpointError", "alignment"),
    C("gguf/unsupported-architecture", """
        p = write_llama_gguf(tmp / 'b.gguf', overrides={'general.architecture': ('str', 'bert')}); ft.Model.from_pretrained(p)""",
      "CheckpointError", "bert"),
    C("gguf/embedding_length-huge", """
        p = write_llama_gguf(tmp / 'e.gguf', overrides={'llama.embedding_length': ('u64', 2**40)}); ft.Model.from_pretrained(p)""",
      ("ConfigError", "CheckpointError"), "embedding_length"),
    C("gguf/feed_forward_length-huge", """
        p = write_llama_gguf(tmp / 'f.gguf', overrides={'llama.feed_forward_length': ('u64', 2**40)}); ft.Model.from_pretrained(p)""",
      ("ConfigError", "CheckpointError"), "feed_forward_length"),
    C("gguf/block_count-huge", """
        p = write_llama_gguf(tmp / 'k.gguf', overrides={'llama.block_count': ('u32', 10**9)}); ft.Model.from_pretrained(p)""",
      ("ConfigError", "CheckpointError"), "block_count"),
    C("gguf/head_count-zero", """
        p = write_llama_gguf(tmp / 'h.gguf', overrides={'llama.attention.head_count': ('u32', 0)}); ft.Model.from_pretrained(p)""",
      ("ConfigError", "CheckpointError"), "head_count"),
    C("gguf/embedding_length-missing", """
        p = write_llama_gguf(tmp / 'm.gguf', drop=['llama.embedding_length']); ft.Model.from_pretrained(p)""",
      "CheckpointError", "llama.embedding_length"),
    C("gguf/tensor-offset-wraps", """
        kvs, ts = llama_gguf_parts(); head = gguf_bytes(kvs, [tuple(t) for t in ts])
        data_offset = len(gguf_bytes(kvs, [(n, d, g, b'', 0) for n, d, g, _, _ in ts]))
        ts[0][4] = 2**64 - data_offset
        p = tmp / 'w.gguf'; p.write_bytes(gguf_bytes(kvs, [tuple(t) for t in ts]))
        ft.Model.from_pretrained(p)""", "CheckpointError", "offset"),
    C("gguf/tensor-offset-past-end", """
        def patch(ts): ts[-1][4] = 1 << 30
        p = write_llama_gguf(tmp / 'o.gguf', tensor_patch=patch); ft.Model.from_pretrained(p)""",
      "CheckpointError", "past the end"),
    C("gguf/tensor-dims-overflow", """
        def patch(ts): ts[0][1] = [2**32, 2**32, 2**16]
        p = write_llama_gguf(tmp / 'd.gguf', tensor_patch=patch); _core.read_gguf_tensor_infos(p)""",
      "CheckpointError", "dims"),
    C("gguf/tensor-five-dims", """
        def patch(ts): ts[0][1] = [1, 1, 1, 1, 1]
        p = write_llama_gguf(tmp / 'd5.gguf', tensor_patch=patch); _core.read_gguf_tensor_infos(p)""",
      "CheckpointError", "dims"),
    C("gguf/tensor-unknown-name", """
        def patch(ts): ts[-1][0] = 'blk.0.mystery.weight'
        p = write_llama_gguf(tmp / 'x.gguf', tensor_patch=patch); ft.Model.from_pretrained(p)""",
      "CheckpointError", r"blk\.0\.mystery\.weight"),
    C("gguf/tensor-wrong-shape", """
        def patch(ts):
            t = next(t for t in ts if t[0] == 'output_norm.weight'); t[1] = [24]; t[3] = t[3][:96]
        p = write_llama_gguf(tmp / 'sh.gguf', tensor_patch=patch); ft.Model.from_pretrained(p)""",
      "ShapeError", r"model\.norm\.weight"),
    C("gguf/unsupported-ggml-type", """
        def patch(ts): ts[-1][2] = 7  # Q5_1
        p = write_llama_gguf(tmp / 'q.gguf', tensor_patch=patch); ft.Model.from_pretrained(p)""",
      "CheckpointError", "Q5_1"),
    C("gguf/tokenizer-sentencepiece", """
        p = write_llama_gguf(tmp / 'sp.gguf', overrides={'tokenizer.ggml.model': ('str', 'llama')}); ft.Tokenizer.from_pretrained(p)""",
      "TokenizerError", "SentencePiece"),
    C("gguf/no-tokenizer", "_core.load_gguf_tokenizer(FIX / 'gguf_tiny' / 'tiny.gguf')", "TokenizerError", "no tokenizer"),
    C("gguf/metadata-array-50M-items", """
        p = tmp / 'big.gguf'; n = 50_000_000
        with open(p, 'wb') as f:
            f.write(b'GGUF' + (3).to_bytes(4, 'little') + (0).to_bytes(8, 'little') + (2).to_bytes(8, 'little'))
            f.write(len(b'general.architecture').to_bytes(8, 'little') + b'general.architecture' + (8).to_bytes(4, 'little')
                    + (5).to_bytes(8, 'little') + b'llama')
            f.write((10).to_bytes(8, 'little') + b'x.u8_array' + (9).to_bytes(4, 'little') + (0).to_bytes(4, 'little')
                    + n.to_bytes(8, 'little'))
            f.truncate(f.tell() + n)
        ft.Model.from_pretrained(p)""", FERRO, None, solo=True,
      after="assert rss_mb() < 400, f'peak RSS {rss_mb():.0f} MB for a 48 MB file'",
      why="a 48 MB GGUF holding one 50M-item array: a typed error, peak RSS < 400 MB"),
    # ---------------------------------------------------------------- tokenizers
    C("tokenizer/missing-directory", "ft.Tokenizer.from_pretrained(tmp / 'nope')", "FileNotFoundError", "nope"),
    C("tokenizer/empty-directory", "(tmp / 'empty').mkdir(); ft.Tokenizer.from_pretrained(tmp / 'empty')",
      ("FileNotFoundError", "TokenizerError"), r"tokenizer\.json"),
    C("tokenizer/tokenizer-json-not-json", """
        d = copy_fixture('tokenizer_bpe'); (d / 'tokenizer.json').write_text('{"model": ')
        ft.Tokenizer.from_pretrained(d)""", "TokenizerError", r"tokenizer\.json"),
    C("tokenizer/tokenizer-json-unknown-model", """
        d = copy_fixture('tokenizer_bpe'); edit_json(d / 'tokenizer.json', model={'type': 'Mystery'})
        ft.Tokenizer.from_pretrained(d)""", "TokenizerError", r"tokenizer\.json"),
    C("tokenizer/tokenizer-config-not-json", """
        d = copy_fixture('tokenizer_bpe'); (d / 'tokenizer_config.json').write_text('{oops')
        ft.Tokenizer.from_pretrained(d)""", "TokenizerError", r"tokenizer_config\.json"),
    C("tokenizer/vocab-json-not-json", """
        (tmp / 's').mkdir(); (tmp / 's' / 'vocab.json').write_text('[1,'); (tmp / 's' / 'merges.txt').write_text('#version: 0.2\\n')
        ft.Tokenizer.from_pretrained(tmp / 's')""", "TokenizerError", r"vocab\.json"),
    C("tokenizer/padding-without-pad-token", "tok()(['a', 'bb cc'], padding=True)", "TokenizerError", "pad"),
    C("tokenizer/padding-max_length-1e12", """
        t = tok(); t.pad_token = t.eos_token; t(['hello'], padding='max_length', max_length=10**12)""",
      FERRO, "max_length"),
    C("tokenizer/padding-max_length-1e12-np", """
        t = tok(); t.pad_token = t.eos_token; t(['hello'], padding='max_length', max_length=10**12, return_tensors='np')""",
      FERRO, "max_length"),
    C("tokenizer/max_length-negative", "tok()('hello', truncation=True, max_length=-1)", "InputError", "max_length"),
    C("tokenizer/padding-unknown", "tok()('hello', padding='sideways')", "InputError", "sideways"),
    C("tokenizer/text-not-str", "tok()(123)", "InputError", "int"),
    C("tokenizer/return-tensors-pt", "tok()('hello', return_tensors='pt')", "InputError", "pt"),
    C("tokenizer/decode-out-of-range", "tok().decode([10**9])", "InputError", "1000000000"),
    C("tokenizer/decode-minus-100", "tok().decode([5, -100])", "InputError", "-100"),
    C("tokenizer/padding-side-unknown", "t = tok(); t.padding_side = 'middle'", "InputError", "middle"),
    C("tokenizer/train-vocab-size-zero", "ft.Tokenizer.train_new_from_iterator(['a b c'], vocab_size=0)", "InputError", "vocab_size"),
    C("tokenizer/train-vocab-size-1e12", "ft.Tokenizer.train_new_from_iterator(['a b c'], vocab_size=10**12)",
      ("InputError", "TokenizerError"), "vocab_size", why="today the Rust trainer aborts the interpreter (allocation failure)"),
    C("tokenizer/pad-to-multiple-of-1e12", """
        t = tok(); t.pad_token = t.eos_token; t(['hello'], padding=True, pad_to_multiple_of=10**12)""", FERRO, "pad_to_multiple_of"),
    C("tokenizer/model_max_length-zero", "t = tok(); t.model_max_length = 0", "InputError", "model_max_length"),
    # ---------------------------------------------------------------- datasets and collators
    C("data/jsonl-missing", "ft.load_jsonl(tmp / 'none.jsonl')", "FileNotFoundError", r"none\.jsonl"),
    C("data/jsonl-bad-line", """
        p = tmp / 'd.jsonl'; p.write_text('{"text": "a"}\\n{"text": \\n'); ft.load_jsonl(p)""", "DataError", r"d\.jsonl:2"),
    C("data/jsonl-not-object", "p = tmp / 'd.jsonl'; p.write_text('[1, 2]\\n'); ft.load_jsonl(p)", "DataError", "object"),
    C("data/collator-empty", "ft.DataCollatorWithPadding(pad_token_id=0)([])", "DataError", "empty"),
    C("data/collator-float-ids", "ft.DataCollatorForLanguageModeling(pad_token_id=0)([{'input_ids': [0.5, 1.5]}])",
      "DataError", "integers"),
    C("data/collator-mask-length", """
        ft.DataCollatorForLanguageModeling(pad_token_id=0)([{'input_ids': [1, 2, 3], 'attention_mask': [1, 1]}])""",
      "DataError", "attention_mask"),
    C("data/trainer-empty-dataset", """
        args = ft.TrainingArguments(output_dir=str(tmp / 'o'), max_steps=1, report_to=[])
        ft.Trainer(model=gpt2(), args=args, train_dataset=[]).train()""", "DataError", "no examples"),
    C("data/trainer-text-without-tokenizer", """
        args = ft.TrainingArguments(output_dir=str(tmp / 'o'), max_steps=1, report_to=[])
        ft.Trainer(model=gpt2(), args=args, train_dataset=[{'text': 'hello'}]).train()""", "DataError", "tokenizer"),
    C("data/trainer-token-id-out-of-vocab", """
        args = ft.TrainingArguments(output_dir=str(tmp / 'o'), max_steps=1, report_to=[])
        ft.Trainer(model=gpt2(), args=args, train_dataset=[{'input_ids': [1, 2, 999]}]).train()""",
      ("InputError", "DataError"), "999"),
    C("data/trainer-columns-different-lengths", """
        args = ft.TrainingArguments(output_dir=str(tmp / 'o'), max_steps=1, report_to=[])
        ft.Trainer(model=gpt2(), args=args, train_dataset={'input_ids': [[1, 2], [3, 4]], 'labels': [[1, 2]]}).train()""",
      "DataError", "lengths"),
    C("data/chat-without-assistant", """
        t = ft.Tokenizer.from_pretrained(FIX / 'chat_tokenizer')
        args = ft.TrainingArguments(output_dir=str(tmp / 'o'), max_steps=1, report_to=[])
        rows = [{'messages': [{'role': 'user', 'content': 'hi'}]}]
        ft.Trainer(model=gpt2(vocab_size=len(t)), args=args, train_dataset=rows, processing_class=t).train()""",
      "DataError", "assistant"),
    # ---------------------------------------------------------------- TrainingArguments
    C("args/fp16", "ft.TrainingArguments(output_dir=str(tmp), fp16=True)", "ConfigError", "fp16"),
    C("args/learning-rate-negative", "ft.TrainingArguments(output_dir=str(tmp), learning_rate=-1)", "ConfigError", "learning_rate"),
    C("args/learning-rate-nan", "ft.TrainingArguments(output_dir=str(tmp), learning_rate=float('nan'))", "ConfigError", "learning_rate"),
    C("args/max-grad-norm-nan", "ft.TrainingArguments(output_dir=str(tmp), max_grad_norm=float('nan'))", "ConfigError", "max_grad_norm"),
    C("args/batch-size-zero", "ft.TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=0)",
      "ConfigError", "per_device_train_batch_size"),
    C("args/grad-accum-zero", "ft.TrainingArguments(output_dir=str(tmp), gradient_accumulation_steps=0)",
      "ConfigError", "gradient_accumulation_steps"),
    C("args/scheduler-unknown", "ft.TrainingArguments(output_dir=str(tmp), lr_scheduler_type='bogus')", "ConfigError", "bogus"),
    C("args/warmup-ratio-2", "ft.TrainingArguments(output_dir=str(tmp), warmup_ratio=2.0)", "ConfigError", "warmup_ratio"),
    C("args/save-strategy-unknown", "ft.TrainingArguments(output_dir=str(tmp), save_strategy='sometimes')", "ConfigError", "save_strategy"),
    C("args/adam-beta1-one", "ft.TrainingArguments(output_dir=str(tmp), adam_beta1=1.0)", "ConfigError", "beta"),
    C("args/max-steps-string", "ft.TrainingArguments(output_dir=str(tmp), max_steps='x')", "ConfigError", "max_steps"),
    C("args/save-total-limit-negative", "ft.TrainingArguments(output_dir=str(tmp), save_total_limit=-1)", "ConfigError", "save_total_limit"),
    C("args/from-json-unknown-field", "ft.TrainingArguments.from_dict({'output_dir': str(tmp), 'warp_speed': 9})",
      "ConfigError", "warp_speed"),
    C("args/output-dir-is-a-file", """
        (tmp / 'f').write_text('x')
        args = ft.TrainingArguments(output_dir=str(tmp / 'f'), max_steps=1, save_strategy='steps', save_steps=1, report_to=[])
        ft.Trainer(model=gpt2(), args=args, train_dataset=[{'input_ids': [1, 2, 3]}]).train()""",
      ("FileExistsError", "NotADirectoryError", "ConfigError"), r"f\b", after="assert (tmp / 'f').read_text() == 'x'"),
    # ---------------------------------------------------------------- generate
    C("generate/max-new-tokens-zero", "gen_model().generate(ids(1, 4), max_new_tokens=0)", "ValueError", "max_new_tokens"),
    C("generate/exceeds-context", "gen_model().generate(ids(1, 4), max_new_tokens=100)", "InputError", "exceeds"),
    C("generate/temperature-negative", "gen_model().generate(ids(1, 4), max_new_tokens=2, do_sample=True, temperature=-1.0)",
      "ValueError", "temperature"),
    C("generate/temperature-nan", "gen_model().generate(ids(1, 4), max_new_tokens=2, do_sample=True, temperature=float('nan'))",
      "ValueError", "temperature"),
    C("generate/top-p-zero", "gen_model().generate(ids(1, 4), max_new_tokens=2, do_sample=True, top_p=0.0)", "ValueError", "top_p"),
    C("generate/top-k-negative", "gen_model().generate(ids(1, 4), max_new_tokens=2, do_sample=True, top_k=-1)", "ValueError", "top_k"),
    C("generate/repetition-penalty-zero", "gen_model().generate(ids(1, 4), max_new_tokens=2, repetition_penalty=0.0)",
      "ValueError", "repetition_penalty"),
    C("generate/num-return-greedy", "gen_model().generate(ids(1, 4), max_new_tokens=2, num_return_sequences=2)",
      "ValueError", "num_return_sequences"),
    C("generate/unknown-kwarg", "gen_model().generate(ids(1, 4), max_new_tokens=2, beams=3)", "TypeError", "beams"),
    C("generate/weights-dtype", "gen_model().generate(ids(1, 4), max_new_tokens=2, weights_dtype='int8')", "ValueError", "weights_dtype"),
    C("generate/eos-out-of-vocab", "gen_model().generate(ids(1, 4), max_new_tokens=2, eos_token_id=10**6)", "InputError", "eos"),
    C("generate/pad-negative", "gen_model().generate(ids(1, 4), max_new_tokens=2, pad_token_id=-5)", "InputError", "pad"),
    C("generate/eos-negative", "gen_model().generate(ids(1, 4), max_new_tokens=2, eos_token_id=-1)", "InputError", "-1"),
    C("generate/mask-shape", "gen_model().generate(ids(1, 4), attention_mask=np.ones((1, 3)), max_new_tokens=2)",
      "ValueError", "attention_mask"),
    C("generate/prompt-id-out-of-vocab", "gen_model().generate(np.array([[1, 2, 99]]), max_new_tokens=2)", "InputError", "99"),
    C("generate/stop-strings-without-tokenizer", "gen_model().generate(ids(1, 4), max_new_tokens=2, stop_strings=['x'])",
      "ValueError", "tokenizer"),
    # ---------------------------------------------------------------- save paths
    C("save/model-path-is-a-file", """
        (tmp / 'f').write_text('keep'); gpt2().save_pretrained(tmp / 'f')""", "FileExistsError", r"\bf\b",
      after="assert (tmp / 'f').read_text() == 'keep'"),
    C("save/model-parent-is-a-file", """
        (tmp / 'f').write_text('keep'); gpt2().save_pretrained(tmp / 'f' / 'sub')""", ("NotADirectoryError", "FileExistsError"),
      r"\bf\b", after="assert (tmp / 'f').read_text() == 'keep'"),
    C("save/tokenizer-path-is-a-file", """
        (tmp / 'f').write_text('keep'); tok().save_pretrained(tmp / 'f')""", "FileExistsError", r"\bf\b",
      after="assert (tmp / 'f').read_text() == 'keep'"),
    C("save/safetensors-path-is-a-directory", """
        from ferrotune.io import save_safetensors
        (tmp / 'd').mkdir(); save_safetensors({'a': np.zeros(2, np.float32)}, tmp / 'd')""",
      ("IsADirectoryError", "OSError", "CheckpointError"), r"\bd\b"),
    C("save/safetensors-unsupported-dtype", """
        from ferrotune.io import save_safetensors
        save_safetensors({'c': np.zeros(2, np.complex64)}, tmp / 'c.safetensors')""", "TypeError", "complex64"),
    C("save/model-read-only-dir", """
        m = gpt2(); d = tmp / 'ro' / 'm'; d.parent.mkdir(); m.save_pretrained(d); read_only_dir(d)
        gpt2(n_layer=1).save_pretrained(d)""", ("PermissionError", "OSError"), r"ro",
      after="assert same_weights(ft.Model.from_pretrained(d), m)"),
    C("save/model-read-only-mount", """
        m = gpt2(); mnt = mount_tmpfs(tmp / 'ro', '4m'); d = mnt / 'm'; m.save_pretrained(d); remount_ro(mnt)
        gpt2(n_layer=1).save_pretrained(d)""", "OSError", r"[Rr]ead-only",
      after="assert same_weights(ft.Model.from_pretrained(d), m)", mount=True),
    C("save/model-disk-full", """
        mnt = mount_tmpfs(tmp / 'full', '64k'); ft.Model.from_pretrained(FIX / 'gpt2_tiny_a').save_pretrained(mnt / 'm')""",
      "OSError", r"[Nn]o space", after="assert not any(mnt.iterdir()), sorted(p.name for p in mnt.iterdir())", mount=True),
    C("save/model-disk-full-keeps-earlier-save", """
        m = gpt2(); mnt = mount_tmpfs(tmp / 'full2', '300k'); d = mnt / 'm'; m.save_pretrained(d)
        used = sum(p.stat().st_size for p in d.iterdir())
        big = ft.Model.from_config({**TINY_GPT2, 'n_embd': 64, 'n_head': 4})
        big.save_pretrained(d)""", "OSError", r"[Nn]o space",
      after="""
        assert same_weights(ft.Model.from_pretrained(d), m)
        assert [p.name for p in mnt.iterdir()] == ['m'], sorted(p.name for p in mnt.iterdir())""", mount=True),
    C("save/tokenizer-disk-full", """
        mnt = mount_tmpfs(tmp / 'tfull', '16k'); tok().save_pretrained(mnt / 't')""", "OSError", r"[Nn]o space",
      after="assert not any(mnt.iterdir()), sorted(p.name for p in mnt.iterdir())", mount=True),
]

# cases that check the harness itself (not part of the catalogue)
HARNESS = [
    C("harness/abort", "os.abort()", None),
    C("harness/ok", "x = 1", None),
    C("harness/raises", "raise ft.InputError('boom')", "InputError", "boom"),
]
BY_ID = {c.id: c for c in CASES + HARNESS}


# ============================================================================== running them

GROUP_SIZE = 16


def _groups():
    plain = [c for c in CASES if not c.solo and not c.mount]
    groups = [(plain[i:i + GROUP_SIZE], False) for i in range(0, len(plain), GROUP_SIZE)]
    groups += [([c], False) for c in CASES if c.solo]
    mounts = [c for c in CASES if c.mount]
    if mounts:
        groups.append((mounts, True))
    return groups


def _private_mounts_work() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _describe_exit(rc) -> str:
    if rc is None:
        return "did not finish in time (killed)"
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


def _run(cases, mount: bool, private: bool, root: Path, n: int) -> dict:
    results_file = root / f"results-{n}.jsonl"
    cmd = [sys.executable, str(HELPER), str(results_file), str(root), *[c.id for c in cases]]
    env = dict(os.environ, PYTHONFAULTHANDLER="1", BAD_INPUTS_PRIVATE_MOUNTS="0")
    if mount and private:
        cmd = ["unshare", "--mount", "--propagation", "private", *cmd]
        env["BAD_INPUTS_PRIVATE_MOUNTS"] = "1"
    timeout = 20 + sum(c.timeout for c in cases)
    rc, err = None, ""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(root))
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    out, done = {}, False
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            r = json.loads(line)
            if r.get("done"):
                done = True
            elif not r.get("started"):
                out[r["id"]] = r
    if not done:
        missing = [c for c in cases if c.id not in out]
        if len(cases) == 1 and missing:
            out[cases[0].id] = {"id": cases[0].id, "crash": _describe_exit(rc), "stderr": err[-4000:]}
        else:
            for i, c in enumerate(missing):  # one per process: pin the crash on its case
                out.update(_run([c], mount, private, root, n * 1000 + i + 1))
    return out


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    private = any(c.mount for c in CASES) and _private_mounts_work()
    results: dict = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_run, cases, mount, private, root, i + 1) for i, (cases, mount) in enumerate(_groups())]
        for f in futures:
            results.update(f.result())
    return results


def test_catalogue_is_large_and_unique():
    assert len(CASES) >= 60
    assert len(BY_ID) == len(CASES) + len(HARNESS), "case ids must be unique"


def test_a_crash_is_pinned_on_its_case(tmp_path):
    """A case that kills its child fails alone; the others of its group still report."""
    out = _run([BY_ID["harness/ok"], BY_ID["harness/abort"], BY_ID["harness/raises"]], False, False, tmp_path, 1)
    assert out["harness/abort"]["crash"] == "killed by signal SIGABRT"
    assert out["harness/ok"]["raised"] is None
    assert out["harness/raises"]["raised"]["mro"][:3] == ["InputError", "FerrotuneError", "Exception"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, catalogue: dict) -> None:
    r = catalogue.get(case.id)
    assert r is not None, f"no result for {case.id}"
    if "crash" in r:
        pytest.fail(f"the interpreter died: {r['crash']}\n{r['stderr']}", pytrace=False)
    if "skip" in r:
        pytest.skip(r["skip"])
    raised = r["raised"]
    if case.exc is None:
        assert raised is None, f"expected no exception, got {raised['type']}: {raised['message']}\n{raised['traceback']}"
    else:
        names = (case.exc,) if isinstance(case.exc, str) else case.exc
        assert raised is not None, f"expected {' or '.join(names)}, nothing was raised"
        assert any(n in raised["mro"] for n in names), (
            f"expected {' or '.join(names)}, got {raised['type']}: {raised['message']}\n{raised['traceback']}"
        )
        if case.match is not None:
            import re

            assert re.search(case.match, raised["message"]), (
                f"{raised['type']} message does not match {case.match!r}: {raised['message']}"
            )
    if case.after is not None:
        assert r.get("after") is None, f"state check after the error failed: {r['after']}"
