"""SuggestionBatch as parallel arrays: what the teacher sends is what the student and the views read,
through CDR; arrays that do not fit together are refused with a ValueError naming them; a
recording made with the old layout (one nested Suggestion per environment) still opens in the
report with the teacher's suggestions."""
import re

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_teacher_msgs.msg import SuggestionBatch
from rclpy.serialization import deserialize_message, serialize_message

from llm_teacher.teacher import Suggestion
from llm_teacher_common.lockstep import suggestion_arrays
from llm_teacher_common.messages import suggestion_batch_msg, suggestions_from_msg, top_suggestion
from ros_helpers import old_layout_typestore, write_recording

STAMP = Time(sec=1, nanosec=2)
A = 7
SOURCE = 'transformers:SmolLM2-135M-Instruct'


def through_cdr(batch: SuggestionBatch) -> SuggestionBatch:
    return deserialize_message(serialize_message(batch), SuggestionBatch)


def answers() -> list[Suggestion]:
    """A batch as the teacher answers: a cache hit, no answer yet, an LLM call with one option."""
    return [Suggestion(True, ['explore', 'go to the red key', 'open the red door'], [0.25, 0.5, 0.25],
                       np.array([0.5, 0.25, 0.25, 0, 0, 0, 0], np.float32), cache_hit=True),
            Suggestion(False),
            Suggestion(True, ['pick up the yellow key'], [1.0], np.eye(A, dtype=np.float32)[3], latency_ms=41.5)]


def test_a_teachers_suggestions_read_back_equal():
    sent = answers()
    batch = through_cdr(suggestion_batch_msg(sent, 12, STAMP, A, SOURCE, epoch=9, group=1))
    assert (batch.seq, batch.epoch, batch.group, batch.header.stamp, batch.source) == (12, 9, 1, STAMP, SOURCE)
    read = suggestions_from_msg(batch)
    assert read.valid.tolist() == [s.valid for s in sent] and read.cache_hit.tolist() == [True, False, False]
    assert read.latency_ms.tolist() == [0.0, 0.0, 41.5]
    assert np.array_equal(read.action_probs, np.stack([sent[0].action_probs, np.zeros(A), sent[2].action_probs]))
    assert read.option_env.tolist() == [0, 0, 0, 2]
    assert read.options == sent[0].options + sent[2].options
    assert read.option_probs.tolist() == sent[0].option_probs + sent[2].option_probs
    # what the student takes: the valid rows as distributions
    probs, mask, invalid = suggestion_arrays(read.action_probs, read.valid, A)
    assert mask.tolist() == [1, 0, 1] and invalid == 0 and np.array_equal(probs, read.action_probs)


def test_an_empty_batch_reads_back_empty():
    read = suggestions_from_msg(through_cdr(suggestion_batch_msg([], 0, STAMP, A, SOURCE)))
    assert read.action_probs.shape == (0, A) and not read.options and top_suggestion(SuggestionBatch(), 0) is None


def test_the_top_suggestion_of_an_env_is_read_from_its_own_groups_batch():
    """Live views and reports name the teacher's best option for one env of the sim (env 3 is the
    second env of group 1 when groups hold 2 envs)."""
    best = Suggestion(True, ['explore', 'go to the red key'], [0.3, 0.7], np.full(A, 1 / A))
    batch = through_cdr(suggestion_batch_msg([Suggestion(False), best], 4, STAMP, A, SOURCE, group=1))
    assert top_suggestion(batch, 3) == ('go to the red key', pytest.approx(0.7))
    assert top_suggestion(batch, 2) is None  # no answer (yet) for that env
    assert top_suggestion(batch, 1) is None  # env 1 is in group 0's batches
    batch.option_probs = [0.3, float('nan')]
    assert top_suggestion(batch, 3) is None  # malformed: nothing to show


@pytest.mark.parametrize('suggestion, error', [
    (Suggestion(True, ['explore'], [1.0], np.ones(8, np.float32) / 8), 'environment 1 has 8 action_probs, but the '
                                                                       'step batch has 7 actions'),
    (Suggestion(True, ['explore', 'go to the goal'], [1.0], np.ones(A) / A), 'environment 1 has 2 options and 1 '
                                                                             'option_probs'),
])
def test_a_suggestion_that_does_not_fit_its_step_batch_is_not_sent(suggestion, error):
    with pytest.raises(ValueError, match='suggestion batch 5: ' + re.escape(error)):
        suggestion_batch_msg([answers()[0], suggestion], 5, STAMP, A, SOURCE)
    suggestion_batch_msg([answers()[0], Suggestion(False, action_probs=np.zeros(3))], 5, STAMP, A, SOURCE)  # unread


@pytest.mark.parametrize('change, error', [
    (lambda b: setattr(b, 'cache_hit', [True]), 'for 3 environments, 7 actions and 4 options: cache_hit has 1'),
    (lambda b: setattr(b, 'latency_ms', [0.0] * 4), 'latency_ms has 4'),
    (lambda b: setattr(b, 'action_probs', [0.0] * 20), 'action_probs has 20, not 3 x 7'),
    (lambda b: setattr(b, 'num_actions', 8), 'for 3 environments, 8 actions and 4 options: action_probs has 21, '
                                             'not 3 x 8'),
    (lambda b: setattr(b, 'valid', [True, True]), 'for 2 environments, 7 actions and 4 options: cache_hit has 3, '
                                                  'latency_ms has 3, action_probs has 21, not 2 x 7'),
    (lambda b: setattr(b, 'options', ['explore']), 'options has 1'),
    (lambda b: setattr(b, 'option_probs', []), 'option_probs has 0'),
    (lambda b: setattr(b, 'option_env', [0, 0, 0, 3]), 'an option of environment 3, but there are 3'),
])
def test_arrays_that_do_not_fit_together_are_refused_naming_them(change, error):
    batch = suggestion_batch_msg(answers(), 7, STAMP, A, SOURCE)
    change(batch)
    with pytest.raises(ValueError, match=r'suggestion batch 7.*' + re.escape(error)):
        suggestions_from_msg(through_cdr(batch))
    assert top_suggestion(batch, 0) is None  # a view shows nothing of it


TEXT = st.text(max_size=8)
FLOAT32 = st.floats(width=32)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_any_batch_reads_or_is_refused_with_a_value_error(data):
    """What a fuzzed DDS peer may send: the read returns N suggestions, or a ValueError; the
    student's intake and the views' top option take whatever reads."""
    n, a, m = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3) | st.integers(0, 2 ** 32 - 1)), \
        data.draw(st.integers(0, 4))

    def array(elements, size):
        return data.draw(st.one_of(st.lists(elements, min_size=size, max_size=size), st.lists(elements, max_size=5)))

    batch = SuggestionBatch(
        seq=3, num_actions=a, valid=array(st.booleans(), n), cache_hit=array(st.booleans(), n),
        latency_ms=array(FLOAT32, n), action_probs=array(FLOAT32, n * a if n * a <= 12 else 0),
        option_env=array(st.integers(0, n) | st.integers(0, 2 ** 32 - 1), m), options=array(TEXT, m),
        option_probs=array(FLOAT32, m))
    batch = through_cdr(batch)
    for env in range(4):
        top = top_suggestion(batch, env)
        assert top is None or top[0] in batch.options
    try:
        read = suggestions_from_msg(batch)
    except ValueError as err:
        assert str(err).startswith('suggestion batch 3')
        return
    assert len(read.valid) == len(batch.valid) and read.action_probs.shape == (len(batch.valid), a)
    probs, mask, invalid = suggestion_arrays(read.action_probs, read.valid, 3)
    assert np.isfinite(probs).all() and mask.sum() + invalid == read.valid.sum()


# The old layout's definitions (before #35: one Suggestion per environment)
OLD_LAYOUT = {
    'SuggestionBatch': 'std_msgs/Header header\nuint64 seq\nuint64 epoch\nuint32 group\nSuggestion[] suggestions\n',
    'Suggestion': 'bool valid\nstring[] options\nfloat32[] option_probs\nfloat32[] action_probs\nstring source\n'
                  'bool cache_hit\nfloat32 latency_ms\n',
}


def test_a_recording_with_the_old_layout_still_opens_in_the_report(tmp_path):
    """An MCAP carries its schemas: the report reads one recorded before the parallel arrays and
    names the teacher's suggestion of its frames."""
    from llm_teacher.report import read_recording, suggestion_at

    typestore = old_layout_typestore(OLD_LAYOUT)
    t = typestore.types
    old = t['llm_teacher_msgs/msg/Suggestion']
    header = t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='')
    batch = t['llm_teacher_msgs/msg/SuggestionBatch'](header=header, seq=20, epoch=5, group=0, suggestions=[
        old(valid=True, options=['explore', 'go to the red key'], option_probs=np.array([0.4, 0.6], np.float32),
            action_probs=np.full(A, 1 / A, np.float32), source=SOURCE, cache_hit=True, latency_ms=0.0),
        old(valid=False, options=[], option_probs=np.zeros(0, np.float32), action_probs=np.zeros(0, np.float32),
            source=SOURCE, cache_hit=False, latency_ms=0.0)])
    write_recording(tmp_path, '/suggestion_batch', 'llm_teacher_msgs/msg/SuggestionBatch', batch, typestore)
    recorded = read_recording(tmp_path)['/suggestion_batch']
    [(time_ns, read)] = recorded
    assert time_ns == 10 and read.seq == 20 and len(read.suggestions) == 2
    assert suggestion_at(recorded, 10) == 'go to the red key (0.60)'
    assert suggestion_at(recorded, 10, env=1) == 'no suggestion yet' and suggestion_at(recorded, 9) == 'no suggestion yet'
