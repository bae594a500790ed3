"""`returns_no_graph`: which functions return values that cannot hold autograd history.
Each case is a function a checked file might define and the answer it must get."""

from __future__ import annotations

import ast

import pytest

from ema_lint.analysis.graph_free import returns_no_graph

CASES = {
 "def f(loss, w):\n    loss *= 0.5\n    return loss\n": False,
 "def f(x):\n    loss = x\n    loss = loss.mean()\n    return loss\n": False,
 "def f(x, skip):\n    loss = x.sum()\n    if skip:\n        loss = 0.0\n    return loss\n": False,
 "def f(x, c):\n    losses = [0.0, 0.0]\n    losses[0] = c(x)\n    return losses\n": False,
 "import torch\ndef f(x):\n    out = x * 2\n    with torch.no_grad():\n        return out\n": False,
 "def f(x):\n    return x.sign()\n": False,
 "import torch\n@torch.no_grad()\ndef f(x):\n    with torch.enable_grad():\n        return x * 2\n": False,
 "import torch\n@torch.no_grad()\ndef f(x):\n    return x\n": False,
 "import torch\n@torch.no_grad()\ndef f(x):\n    return x * 2\n": True,
 "import torch\n@torch.inference_mode(False)\ndef f(x):\n    return x * 2\n": False,
 "import torch\ndef f(x):\n    with torch.no_grad():\n        with torch.enable_grad():\n            return x * 2\n": False,
 "def f(x):\n    if (y := x * 2) is not None:\n        pass\n    z = y\n    return z\n": False,
 "import torch\ndef f(x, t):\n    with torch.no_grad():\n        return (x.argmax(1) == t).float().mean()\n": True,
 "def f(o, idx):\n    y = (o[idx] > 0).cpu().numpy()\n    return abs(sum(y) / len(y) - 0.5), max(y)\n": True,
 "def f(o):\n    return abs(sum(o))\n": False,
 "def f(o):\n    return max()\n": False,
 "def f(o, t, topk=(1,)):\n    bs = t.size(0)\n    _, pred = o.topk(max(topk), 1, True, True)\n    correct = pred.t().eq(t.view(1, -1))\n    res = []\n    for k in topk:\n        ck = correct[:k].view(-1).float().sum(0)\n        res.append(ck.mul_(100.0 / bs))\n    return res\n": True,
}


@pytest.mark.parametrize(("source", "expected"), list(CASES.items()), ids=[str(i) for i in range(len(CASES))])
def test_returns_no_graph(source: str, expected: bool) -> None:
    function = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))
    assert returns_no_graph(function) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("    ious = [score(m, p.detach().cpu().numpy()) for m, p in zip(masks, pred)]\n    return np.mean(ious)\n", True),
        ("    return mean([1.0, p.sum()])\n", True),
        ("    return np_like.mean(pred)\n", False),
    ],
    ids=["numpy alias", "name from numpy", "not numpy"],
)
def test_results_of_numpy_like_libraries_hold_no_graph(body: str, expected: bool) -> None:
    """UCTransNet's `iou_on_batch` returns `np.mean(ious)`: NumPy refuses a tensor that
    requires grad, so what it returns is never one."""
    function = ast.parse("def iou_on_batch(masks, pred):\n" + body).body[0]
    assert returns_no_graph(function, frozenset({"np", "mean"})) is expected
