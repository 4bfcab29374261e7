"""The problem a probe measures, below every probe: the samples it reads (in memory or streamed
batch by batch, :mod:`landscape.core.data`)."""

from landscape.core.data import Stream, is_stream, iter_batches

__all__ = ["Stream", "is_stream", "iter_batches"]
