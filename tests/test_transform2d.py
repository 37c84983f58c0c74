"""The one 2D rigid transform the map crop, the deployed robot's map input and the simulators' poses use."""
import math

import numpy as np
import pytest

from llm_teacher_common.transform2d import Transform2D


def test_a_quarter_turn_sends_forward_to_the_parents_y():
    """REP-103: yaw counter-clockwise from x, so a frame at (1, 2) facing +y has its forward
    along the parent's +y and its left along the parent's -x."""
    frame = Transform2D(1.0, 2.0, math.pi / 2)
    assert frame.to_parent(3.0, 0.0) == pytest.approx((1.0, 5.0))
    assert frame.to_parent(0.0, 3.0) == pytest.approx((-2.0, 2.0))
    assert frame.from_parent(1.0, 5.0) == pytest.approx((3.0, 0.0))
    assert frame.compose((3.0, 0.0, math.pi / 2)) == pytest.approx((1.0, 5.0, math.pi))


def test_from_parent_undoes_to_parent_and_composing_chains_frames():
    """Round trips, on single points and on arrays of them (a grid of cell centres), and
    composition: a point through two frames one after the other is the point through their composition."""
    rng = np.random.default_rng(0)
    outer, inner = Transform2D(1.5, -2.0, 0.7), Transform2D(-0.3, 4.0, -2.9)
    x, y = rng.uniform(-50, 50, (2, 7, 5))
    back = outer.from_parent(*outer.to_parent(x, y))
    assert np.allclose(back, (x, y), atol=1e-12)
    assert outer.to_parent(*outer.from_parent(1.0, 2.0)) == pytest.approx((1.0, 2.0))
    assert np.allclose(outer.compose(inner).to_parent(x, y), outer.to_parent(*inner.to_parent(x, y)), atol=1e-12)
    assert outer.compose((0.0, 0.0, 0.0)) == outer
    assert isinstance(outer.compose(inner), Transform2D)
