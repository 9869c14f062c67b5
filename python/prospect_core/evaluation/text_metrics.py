"""BLEU-1..4, METEOR and CIDEr on matched pairs, through pycocoevalcap (PTB tokenizer and METEOR need Java)."""

import shutil

NAMES = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "CIDEr"]


def text_metrics(pairs):
    """pairs: [(prediction, reference)] -> {Bleu_1..Bleu_4, METEOR, CIDEr}; zeros when there are no pairs."""
    if not pairs:
        return {k: 0.0 for k in NAMES}
    if shutil.which("java") is None:
        raise RuntimeError("pycocoevalcap's PTB tokenizer and METEOR need Java: apt-get install default-jre-headless")
    # pycocoevalcap is the hf extra's and runs Java: imported once Java is known to be there.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    res = tok.tokenize({i: [{"caption": p}] for i, (p, _) in enumerate(pairs)})
    gts = tok.tokenize({i: [{"caption": r}] for i, (_, r) in enumerate(pairs)})
    out = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    meteor = Meteor()
    try:
        out["METEOR"] = float(meteor.compute_score(gts, res)[0])
    finally:
        _close_meteor(meteor)
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def _close_meteor(m):
    with m.lock:
        if m.meteor_p:
            m.meteor_p.stdin.close()
            m.meteor_p.kill()
            m.meteor_p.wait()
