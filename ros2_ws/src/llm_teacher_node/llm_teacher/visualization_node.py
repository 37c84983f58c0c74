"""visualization_node: what a person watching a training run wants to see, for rviz2 and Foxglove.

For one environment (`env`, default 0) it publishes visualization_msgs/MarkerArray on
`teacher_markers` (frame `map`): a text marker with the teacher's current suggestion and its
probability, and the student's action distribution as a bar per action, each redrawn at most
`max_rate_hz` a second (batches come at hundreds a second). rviz/train.rviz shows them with the
sim's `image`.

With `foxglove_port` >= 0 it also serves the same on a Foxglove WebSocket (foxglove-sdk) at
ws://127.0.0.1:<port> (0: a free port, logged): /image (foxglove.RawImage), /teacher/suggestion,
/student/action_probs, /training/status and /teacher/status (JSON). Open it in Foxglove with
"Open connection" -> Foxglove WebSocket.

    ros2 run llm_teacher visualization_node --ros-args -p foxglove_port:=8765
"""
from __future__ import annotations

import math
import time

import foxglove
from foxglove.channels import RawImageChannel
from foxglove.messages import RawImage, Timestamp
from geometry_msgs.msg import Point
from llm_teacher_msgs.msg import ActionBatch, SuggestionBatch, TeacherStatus, TrainingStatus
from rclpy.node import Node

from llm_teacher_common.families import family_of_task
from llm_teacher_common.messages import index_in_batch, top_suggestion
from llm_teacher_common.node import parameter, spin
from sensor_msgs.msg import Image
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

BAR_WIDTH = 0.3


def action_markers(probs: list[float], stamp, names: tuple[str, ...]) -> list[Marker]:
    """One bar (CUBE, height = probability) and one label per action, side by side along y."""
    markers = []
    for i, p in enumerate(probs):
        bar = Marker(ns='student_action_probs', id=i, type=Marker.CUBE, action=Marker.ADD)
        bar.header.frame_id, bar.header.stamp = 'map', stamp
        bar.pose.position.y = -i * (BAR_WIDTH + 0.1)
        bar.pose.position.z = max(p, 1e-3) / 2
        bar.pose.orientation.w = 1.0
        bar.scale.x, bar.scale.y, bar.scale.z = BAR_WIDTH, BAR_WIDTH, max(p, 1e-3)
        bar.color = ColorRGBA(r=0.2, g=0.5, b=1.0, a=0.9)
        label = Marker(ns='student_action_labels', id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        label.header = bar.header
        label.pose.position = Point(x=0.0, y=bar.pose.position.y, z=-0.15)
        label.pose.orientation.w = 1.0
        label.scale.z = 0.12
        label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        label.text = f'{names[i]} {p:.2f}'
        markers += [bar, label]
    return markers


class VisualizationNode(Node):

    def __init__(self):
        super().__init__('visualization_node')
        self.env = parameter(self, 'env', 0, 'The environment whose suggestions and actions are shown')
        task = parameter(self, 'task', 'MiniGrid-SimpleDoorKey-v0', "The run's task: its family names the actions")
        self.action_names = family_of_task(task).action_names
        port = parameter(self, 'foxglove_port', 8765, 'Foxglove WebSocket port on 127.0.0.1 (-1: off, 0: any free port)')
        max_rate = parameter(self, 'max_rate_hz', 10.0, 'Most redraws a second of the suggestion and of the action '
                             'bars: batches come at hundreds a second, a person reads a few (0: every batch)')
        if max_rate < 0:
            raise SystemExit(f'visualization_node: max_rate_hz must be >= 0, got {max_rate}')
        self.min_period_ns = int(1e9 / max_rate) if max_rate > 0 else 0
        self.last_shown: dict[str, int] = {}  # view -> monotonic ns it was last drawn
        self.marker_pub = self.create_publisher(MarkerArray, 'teacher_markers', 10)
        for kind, topic, callback, depth in ((SuggestionBatch, 'suggestion_batch', self.on_suggestions, 10),
                                             (ActionBatch, 'action_batch', self.on_actions, 10),
                                             (Image, 'image', self.on_image, 1),
                                             (TrainingStatus, 'training_status', self.on_training_status, 10),
                                             (TeacherStatus, 'teacher_status', self.on_teacher_status, 10)):
            self.create_subscription(kind, topic, self.shown_or_skipped(callback), depth)
        self.server = None
        if port >= 0:
            self.server = foxglove.start_server(name='llm_teacher', host='127.0.0.1', port=port)
            self.channels = {
                'image': RawImageChannel('/image'),
                'suggestion': foxglove.Channel('/teacher/suggestion', message_encoding='json'),
                'actions': foxglove.Channel('/student/action_probs', message_encoding='json'),
                'training': foxglove.Channel('/training/status', message_encoding='json'),
                'teacher': foxglove.Channel('/teacher/status', message_encoding='json'),
            }
            self.get_logger().info(f'Foxglove WebSocket server on ws://127.0.0.1:{self.server.port}')

    def shown_or_skipped(self, callback):
        """A view shows what it can: a message it cannot draw or log (any field out of what Foxglove or
        rviz2 accept) is skipped with a warning, never the end of the node."""
        def guarded(msg) -> None:
            try:
                callback(msg)
            except Exception as err:  # noqa: BLE001 - nothing on the domain may end a view
                self.get_logger().warning(f'{type(msg).__name__} not shown ({type(err).__name__}: {err})',
                                          throttle_duration_sec=5.0)
        return guarded

    def on_suggestions(self, batch: SuggestionBatch) -> None:
        if index_in_batch(self.env, batch.group, len(batch.valid)) is None or not self.due('suggestion'):
            return  # the batch of another env group, or drawn a moment ago
        text, probability = top_suggestion(batch, self.env) or ('teacher: no answer yet', 0.0)
        marker = Marker(ns='teacher_suggestion', id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        marker.header.frame_id, marker.header.stamp = 'map', batch.header.stamp
        marker.pose.position.z = 1.4
        marker.pose.orientation.w = 1.0
        marker.scale.z = 0.2
        marker.color = ColorRGBA(r=1.0, g=0.85, b=0.2, a=1.0)
        marker.text = f'teacher: {text} ({probability:.2f})'
        self.marker_pub.publish(MarkerArray(markers=[marker]))
        self.log('suggestion', {'seq': batch.seq, 'env': self.env, 'option': text, 'probability': probability})

    def on_actions(self, batch: ActionBatch) -> None:
        # Two markers per action: only a batch with the task's number of actions per env is drawn,
        # so a malformed one cannot make a marker array of any size.
        num_actions = len(self.action_names)
        if not batch.actions or len(batch.action_probs) != len(batch.actions) * num_actions:
            return
        env = index_in_batch(self.env, batch.group, len(batch.actions))
        if env is None:
            return  # the batch of another env group
        probs = list(batch.action_probs[env * num_actions:(env + 1) * num_actions])
        if all(math.isfinite(p) for p in probs) and self.due('actions'):
            self.marker_pub.publish(MarkerArray(markers=action_markers(probs, batch.header.stamp, self.action_names)))
            self.log('actions', {'seq': batch.seq, 'env': self.env, 'action': int(batch.actions[env]),
                                 'probs': dict(zip(self.action_names, probs))})

    def on_image(self, image: Image) -> None:
        if self.server is not None:
            stamp = Timestamp(sec=image.header.stamp.sec, nsec=image.header.stamp.nanosec)
            self.channels['image'].log(RawImage(timestamp=stamp, frame_id=image.header.frame_id, width=image.width,
                                                height=image.height, encoding=image.encoding, step=image.step,
                                                data=bytes(image.data)))

    def on_training_status(self, status: TrainingStatus) -> None:
        self.log('training', {name: getattr(status, name) for name in (
            'frames', 'updates', 'episodes', 'fps', 'mean_return', 'success_rate', 'teacher_weight',
            'teacher_coverage', 'policy_loss', 'value_loss', 'entropy', 'distill_loss')})

    def on_teacher_status(self, status: TeacherStatus) -> None:
        self.log('teacher', {name: getattr(status, name) for name in (
            'source', 'requests', 'cache_hits', 'llm_calls', 'llm_errors', 'parse_failures', 'pending',
            'mean_latency_ms')})

    def due(self, view: str) -> bool:
        """Whether `view` may be drawn now (at most max_rate_hz a second); if so, it counts as drawn."""
        now = time.monotonic_ns()
        if now - self.last_shown.get(view, now - self.min_period_ns) < self.min_period_ns:
            return False
        self.last_shown[view] = now
        return True

    def log(self, channel: str, message: dict) -> None:
        if self.server is not None:
            self.channels[channel].log(message)

    def destroy_node(self) -> None:
        if self.server is not None:
            self.server.stop()
        super().destroy_node()


def main(args=None):
    spin(VisualizationNode, args)


if __name__ == '__main__':
    main()
