"""The event bus: immutable events, per-request streams, subscriber tasks.

The decode worker publishes a request's events to that request's sinks; each
subscriber is a task in the generation's task group reading its own stream.
"""

from .events import Event, Finished, FinishReason, SpeculativeStats, Step, TokenEvent, VerifyStep
from .generation import Generation
from .request import Request, check_order, take_order
from .subscriber import Subscriber

__all__ = [
    "Event",
    "Finished",
    "FinishReason",
    "Generation",
    "Request",
    "SpeculativeStats",
    "Step",
    "Subscriber",
    "TokenEvent",
    "VerifyStep",
    "check_order",
    "take_order",
]
