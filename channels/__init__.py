"""Wireless uplink models that meter every upload. See `channels.registry` for the list."""

from channels.base import Channel
from channels.registry import CHANNELS, ChannelConfig, build_channel

__all__ = ["Channel", "CHANNELS", "ChannelConfig", "build_channel"]
