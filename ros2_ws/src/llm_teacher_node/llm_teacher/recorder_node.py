"""recorder_node: writes a sample of a training run to an MCAP file (rosbag2 layout) with rosbags.

Records the teacher's suggestions, the training and teacher status and the sim's image as they
come, and every `step_every`-th step batch (of each env group) with the action batch answering it and, with
perceptions:=true (train.launch.py sets it where a teacher runs), the perception batch of the same
seq (step batches are the bulk: 1 in 20 keeps a 300k-frame run near 10 MB). Perceptions are off
otherwise because subscribing to them makes the sim compute them. Messages are stored as received
(CDR), so `ros2 bag play`, Foxglove and any MCAP reader replay them.

Each start writes a new recording under run_dir/recordings/<date-time>/; the file is finalised on
Ctrl-C or SIGTERM, and an MCAP cut short by a kill still reads up to its last chunk. A write that
fails (a full disk) stops the recording, not the node nor the run: the error is logged and the
file ends after its last complete chunk, readable as any other.

    ros2 run llm_teacher recorder_node --ros-args -p run_dir:=runs/train
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from rclpy.node import Node

from llm_teacher_common.node import parameter, spin
from mcap.exceptions import McapError
from mcap.records import DataEnd, Footer, Message, RecordBuilder
from mcap.stream_reader import StreamReader
from mcap.writer import MCAP0_MAGIC
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from llm_teacher_msgs.msg import (ActionBatch, PerceptionBatch, StepBatch, SuggestionBatch, TeacherStatus,
                                  TrainingStatus)
from sensor_msgs.msg import Image

# topic -> message class; step batches (and their actions and perceptions) are sampled, the rest
# recorded whole.
TOPICS = {'step_batch': StepBatch, 'action_batch': ActionBatch, 'perception_batch': PerceptionBatch,
          'suggestion_batch': SuggestionBatch, 'training_status': TrainingStatus, 'teacher_status': TeacherStatus,
          'image': Image}
SAMPLED_WITH_STEPS = {'action_batch': ActionBatch, 'perception_batch': PerceptionBatch}  # small to decode
EARLY_KEPT = 64  # per topic: answers kept while their step batch has not come (yet)


def ros_type_name(message_class) -> str:
    """'llm_teacher_msgs/msg/StepBatch' for the class of a generated message."""
    module = message_class.__module__.split('.')  # llm_teacher_msgs.msg._step_batch
    return f'{module[0]}/{module[1]}/{message_class.__name__}'


def typestore_with_project_messages():
    """The Jazzy type store plus this project's messages, read from their installed .msg files."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = Path(get_package_share_directory('llm_teacher_msgs')) / 'msg'
    types = {}
    for path in sorted(msg_dir.glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'llm_teacher_msgs/msg/{path.stem}'))
    typestore.register(types)
    return typestore


def end_cut_recording(mcap_path: Path) -> int:
    """End an MCAP whose writing failed part-way: cut it after its last complete record and add
    an end without a summary (readers then read it through). Returns the messages it keeps.

    :raises OSError: the file cannot be cut or ended.
    """
    kept, end = 0, 0
    with open(mcap_path, 'r+b') as f:
        try:
            for record in StreamReader(f, skip_magic=False).records:  # a chunk's messages come after it is read whole
                if isinstance(record, DataEnd):
                    break  # an ended file: only its summary is replaced
                end, kept = f.tell(), kept + isinstance(record, Message)
        except McapError:
            pass  # the record cut short by the failed write, and nothing after it
        builder = RecordBuilder()
        DataEnd(data_section_crc=0).write(builder)
        Footer(summary_start=0, summary_offset_start=0, summary_crc=0).write(builder)
        f.truncate(end)
        f.seek(0, os.SEEK_END)
        f.write(builder.end() + MCAP0_MAGIC)
    return kept


class RecorderNode(Node):

    def __init__(self):
        super().__init__('recorder_node')
        run_dir = parameter(self, 'run_dir', 'runs/train', 'Recordings go to run_dir/recordings/<date-time>/')
        self.step_every = max(1, parameter(self, 'step_every', 20, 'Record every this many-th step batch (and its actions)'))
        topics = dict(TOPICS)
        if not parameter(self, 'perceptions', False, 'Also record the perception batches (what the teacher reads)'):
            del topics['perception_batch']
        self.path = Path(run_dir) / 'recordings' / time.strftime('%Y%m%d-%H%M%S')
        for restart in itertools.count(2):  # a recorder restarted within the second starts its own recording
            if not self.path.exists():
                break
            self.path = self.path.with_name(f'{time.strftime("%Y%m%d-%H%M%S")}-{restart}')
        self.path.parent.mkdir(parents=True, exist_ok=True)
        typestore = typestore_with_project_messages()
        self.writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.connections = {}
        # seqs of the sampled step batches whose actions (perceptions) are still to come
        self.recorded_seqs = {topic: set() for topic in SAMPLED_WITH_STEPS if topic in topics}
        # ... and those that came before their step batch (topics are not ordered with each other):
        # topic -> seq -> raw message, the last EARLY_KEPT of each
        self.early: dict[str, dict[int, bytes]] = {topic: {} for topic in self.recorded_seqs}
        self.steps_seen: dict[int, int] = {}  # env group -> step batches seen
        for topic, message_class in topics.items():
            name = self.resolve_topic_name(topic)
            self.connections[topic] = self.writer.add_connection(name, ros_type_name(message_class), typestore=typestore)
            self.create_subscription(message_class, topic, lambda data, t=topic: self.on_message(t, data), 10, raw=True)
        self.counts = dict.fromkeys(topics, 0)
        self.get_logger().info(f'recording {", ".join(self.connections)} to {self.path}')

    def on_message(self, topic: str, data: bytes) -> None:
        if self.writer is None:
            return  # stopped after a failed write
        if topic == 'step_batch':
            batch = deserialize_message(data, StepBatch)
            seen = self.steps_seen[batch.group] = self.steps_seen.get(batch.group, 0) + 1
            if seen % self.step_every:
                return
            self.write(topic, data)
            for other, seqs in self.recorded_seqs.items():
                early = self.early[other].pop(batch.seq, None)
                if early is None:
                    seqs.add(batch.seq)
                else:
                    self.write(other, early)
            return
        if topic in SAMPLED_WITH_STEPS:
            seq = deserialize_message(data, SAMPLED_WITH_STEPS[topic]).seq
            if seq not in self.recorded_seqs[topic]:
                early = self.early[topic]
                early[seq] = data
                if len(early) > EARLY_KEPT:
                    del early[next(iter(early))]
                return
            self.recorded_seqs[topic].discard(seq)
        self.write(topic, data)

    def write(self, topic: str, data: bytes) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(self.connections[topic], self.get_clock().now().nanoseconds, data)
        except OSError as err:
            self.stop_recording(err)
            return
        self.counts[topic] += 1

    def stop_recording(self, err: OSError) -> None:
        """After a failed write: close the file without writing to it again, and end it readable."""
        self.get_logger().error(f'recording stopped, the run goes on: writing {self.path} failed ({err})')
        try:
            self.writer.storage.bio.close()  # flushes what it buffered: that fails too on a full disk
        except OSError:
            pass
        self.writer = None
        try:
            kept = end_cut_recording(self.path / f'{self.path.name}.mcap')
            self.get_logger().error(f'{self.path} ends after its last complete chunk: {kept} messages kept')
        except OSError as cut_err:
            self.get_logger().error(f'{self.path} could not be ended ({cut_err})')

    def destroy_node(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
                self.get_logger().info(f'recording closed: {self.path} ({self.counts})')
            except OSError as err:
                self.stop_recording(err)
        super().destroy_node()


def main(args=None):
    spin(RecorderNode, args)


if __name__ == '__main__':
    main()
