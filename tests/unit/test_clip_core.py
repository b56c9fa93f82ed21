"""The CLIP core: identities with open_clip and every extension point."""

import open_clip
import pytest
import torch

from vpg.clip import create_model, get_tokenizer

TOL = 1e-4


def _reference(core):
    """A plain open_clip model holding the same weights."""
    ref = open_clip.create_model(core.name)
    ref.load_state_dict(core.open_clip_state_dict())
    return ref.eval()


@pytest.mark.parametrize("name", ["vpg-tiny", "vpg-shapes-vit", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-B-16-quickgelu"])
def test_identity_with_open_clip(name):
    torch.manual_seed(0)
    core = create_model(name).eval()
    ref = _reference(core)
    size = core.image_size
    images = torch.randn(2, 3, *size)
    tokens = get_tokenizer(name)(["a photo of a red circle", "two blue squares"])
    with torch.no_grad():
        assert (core.encode_image(images) - ref.encode_image(images)).abs().max() <= TOL
        assert (core.encode_text(tokens) - ref.encode_text(tokens)).abs().max() <= TOL


def test_frozen_by_default(tiny_clip):
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    assert any(p.requires_grad for p in create_model("vpg-tiny", frozen=False).parameters())


def test_lora_targetable_projection_names(tiny_clip):
    names = {n for n, _ in tiny_clip.named_modules()}
    for part in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.c_fc"):
        assert f"model.visual.transformer.resblocks.0.{part}" in names
        assert f"model.transformer.resblocks.1.{part}" in names


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown CLIP model name 'ViT-Q-99'"):
        create_model("ViT-Q-99")
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        create_model("vpg-tiny", pretrained=str(missing))


def test_local_weights_file_round_trip(tiny_clip, tmp_path):
    from vpg.clip import save_open_clip_weights

    path = save_open_clip_weights(tiny_clip, tmp_path / "w.safetensors")
    loaded = create_model("vpg-tiny", pretrained=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), tiny_clip.encode_image(x))


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


def test_zero_bias_equals_no_bias(tiny_clip, images):
    L = 1 + 16
    with torch.no_grad():
        plain = tiny_clip.forward_image(images, hidden_layers=[1]).tokens
        full = tiny_clip.forward_image(images, attn_bias={0: torch.zeros(3, L, L), 1: torch.zeros(3, L, L)},
                                       hidden_layers=[1]).tokens
        row = tiny_clip.encode_image(images, attn_bias={1: torch.zeros(3, L)})
    assert (plain - full).abs().max() <= 1e-5
    assert (tiny_clip.encode_image(images) - row).abs().max() <= 1e-5


def test_bias_changes_only_what_it_should(tiny_clip, images):
    L = 17
    bias = torch.zeros(3, L)
    bias[:, 5] = -1e4  # [CLS] may not look at patch 4
    with torch.no_grad():
        out = tiny_clip.forward_image(images, attn_bias={0: bias}, hidden_layers=[0])
        plain = tiny_clip.forward_image(images, hidden_layers=[0])
    # a [CLS]-row bias in block 0 leaves block 0's patch rows untouched, changes [CLS]
    assert torch.allclose(out.hidden[0][:, 1:], plain.hidden[0][:, 1:], atol=1e-6)
    assert not torch.allclose(out.hidden[0][:, 0], plain.hidden[0][:, 0], atol=1e-4)


def test_zero_extra_tokens_equal_none_only_when_masked(tiny_clip, images):
    # Zero prompt tokens still take part in softmax; the identity holds for zero *count*.
    with torch.no_grad():
        none = tiny_clip.encode_image(images)
        empty = tiny_clip.encode_image(images, extra_tokens={0: torch.zeros(0, tiny_clip.vision_width)})
    assert (none - empty).abs().max() <= 1e-6


def test_vpt_deep_replaces_prompts(tiny_clip, images):
    d = tiny_clip.vision_width
    torch.manual_seed(2)
    p0, p1 = torch.randn(4, d), torch.randn(4, d)
    with torch.no_grad():
        deep = tiny_clip.forward_image(images, extra_tokens={0: p0, 1: p1}, hidden_layers=[0, 1])
        shallow = tiny_clip.forward_image(images, extra_tokens={0: p0}, hidden_layers=[0, 1])
    # sequence length stays 1 + 16 + 4: block 1 replaced, not accumulated
    assert deep.hidden[1].shape[1] == 21 and shallow.hidden[1].shape[1] == 21
    # block 1's input prompt tokens are exactly p1 (replaced), so outputs differ from shallow
    assert not torch.allclose(deep.pooled, shallow.pooled)
    assert torch.allclose(deep.hidden[0], shallow.hidden[0])


def test_per_sample_prompts_match_separate_calls(tiny_clip, images):
    d = tiny_clip.vision_width
    prompts = torch.randn(3, 2, d)
    with torch.no_grad():
        batched = tiny_clip.encode_image(images, extra_tokens={1: prompts})
        single = torch.cat([tiny_clip.encode_image(images[i : i + 1], extra_tokens={1: prompts[i]})
                            for i in range(3)])
    assert (batched - single).abs().max() <= 1e-5


def test_insert_between_attention_and_mlp(tiny_clip, images):
    calls = []

    def insert(x):
        calls.append(x.shape)
        return x

    with torch.no_grad():
        same = tiny_clip.encode_image(images, inserts={0: insert})
        shifted = tiny_clip.encode_image(images, inserts={0: lambda x: x + 1.0})
    assert calls == [torch.Size([3, 17, tiny_clip.vision_width])]
    assert (same - tiny_clip.encode_image(images)).abs().max() <= 1e-6
    assert not torch.allclose(shifted, same)


def test_dense_features(tiny_clip, images):
    with torch.no_grad():
        tok = tiny_clip.forward_image(images, dense="tokens")
        val = tiny_clip.forward_image(images, dense="values")
    assert tok.dense.shape == (3, 16, tiny_clip.embed_dim) == val.dense.shape
    # "tokens" = ln_post + proj of the last block's patch outputs
    v = tiny_clip.model.visual
    assert torch.allclose(tok.dense, v.ln_post(tok.tokens[:, 1:]) @ v.proj, atol=1e-6)
    assert torch.allclose(val.pooled, tok.pooled, atol=1e-5)


@pytest.mark.parametrize("share", ["row", "full", "last_only"])
def test_shared_blocks_equal_unshared(tiny_clip, images, share):
    """expand_index: blocks before the first per-row block run once per image; same result."""
    torch.manual_seed(3)
    idx = torch.tensor([0, 0, 1, 2, 2, 2])
    L = 17
    if share == "row":
        bias = {1: torch.randn(6, L)}
    elif share == "full":
        bias = {1: torch.randn(6, L, L)}
    else:
        bias = {0: torch.randn(6, L)}  # block 0 is shared, block 1 is the last ([CLS] only)
    with torch.no_grad():
        shared = tiny_clip.forward_image(images, attn_bias=bias, expand_index=idx, hidden_layers=[0])
        unshared = tiny_clip.forward_image(images[idx], attn_bias=bias, hidden_layers=[0])
        cls_only = tiny_clip.encode_image(images, attn_bias=bias, expand_index=idx)
    assert (shared.pooled - unshared.pooled).abs().max() <= 1e-5
    assert (cls_only - unshared.pooled).abs().max() <= 1e-5
    assert (shared.hidden[0] - unshared.hidden[0]).abs().max() <= 1e-5


def test_shared_blocks_on_vit_b16_twelve_blocks():
    torch.manual_seed(0)
    core = create_model("vpg-shapes-vit").eval()
    images = torch.randn(2, 3, 96, 96)
    idx = torch.tensor([0, 0, 0, 1, 1])
    L = 65
    bias = {i: torch.randn(5, L) for i in (2, 3, 4, 5)}
    with torch.no_grad():
        a = core.encode_image(images, attn_bias=bias, expand_index=idx)
        b = core.encode_image(images[idx], attn_bias=bias)
    assert (a - b).abs().max() <= 1e-5


def test_head_decomposition_sums_to_output(tiny_clip, images):
    bias = {1: torch.randn(3, 17)}
    with torch.no_grad():
        dec = tiny_clip.decompose_image_cls(images, attn_bias=bias)
        real = tiny_clip.encode_image(images, attn_bias=bias)
    assert dec.attn_heads.shape == (3, 2, 2, tiny_clip.embed_dim)
    assert (dec.total() - real).abs().max() <= 1e-4


def test_text_outputs(tiny_clip, tiny_tokenizer):
    tokens = tiny_tokenizer(["a red circle", "a small blue square left of a star"])
    with torch.no_grad():
        out = tiny_clip.forward_text(tokens, hidden_layers=[0, 1])
    eot = tokens.argmax(-1)
    assert torch.equal(out.eot_index, eot)
    assert out.tokens.shape == (2, 16, tiny_clip.embed_dim)
    assert torch.equal(out.pooled, out.tokens[torch.arange(2), eot])
    assert out.padding_mask[0, eot[0] + 1] and not out.padding_mask[0, eot[0]]
    assert set(out.hidden) == {0, 1}


def test_spliced_context_end_and_middle(tiny_clip, tiny_tokenizer):
    names = tiny_tokenizer(["red circle.", "blue star."])
    m = 4
    ctx = torch.randn(m, tiny_clip.text_width)
    emb, eot = tiny_clip.splice_context(names, ctx, "end")
    assert torch.equal(eot, names.argmax(-1) + m)
    assert torch.equal(emb[:, 1 : 1 + m], ctx.expand(2, m, -1))
    # the name follows the context; with the embeddings of placeholder words this equals tokens
    placeholders = tiny_tokenizer(["X X X X red circle.", "X X X X blue star."])
    x_emb = tiny_clip.token_embeddings(placeholders[:, 1:5])[0]
    emb2, eot2 = tiny_clip.splice_context(names, x_emb, "end")
    with torch.no_grad():
        a = tiny_clip.forward_text(embeddings=emb2, eot_index=eot2).pooled
        b = tiny_clip.encode_text(placeholders)
    assert (a - b).abs().max() <= 1e-5
    mid, eot_mid = tiny_clip.splice_context(names, ctx, "middle")
    assert torch.equal(mid[0, 1:3], ctx[:2]) and torch.equal(eot_mid, eot)


def test_peft_lora_by_regex_on_separate_projections():
    """LoRA on q/k/v/out/fc of chosen vision blocks (HiVG's targets) by a regex over module names."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    core = create_model("vpg-tiny").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = core.encode_image(images)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*visual\.transformer\.resblocks\.1\.(attn\.(q|k|v|out)_proj|mlp\.c_fc)")
    inject_adapter_in_model(config, core)
    lora = {n for n, p in core.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n and ".resblocks.1." in n for n in lora)
    assert len({n.split(".lora_")[0] for n in lora}) == 5  # q, k, v, out, c_fc
    with torch.no_grad():
        assert torch.allclose(core.encode_image(images), before, atol=1e-6)  # B = 0 at init
        for name, p in core.named_parameters():
            if "lora_B" in name:
                p.normal_()
        assert not torch.allclose(core.encode_image(images), before, atol=1e-4)  # adapters are on the path
