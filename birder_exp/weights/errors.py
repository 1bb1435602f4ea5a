"""Weights errors: each carries one line that names the entry or file, what went wrong and what would be valid."""


class WeightsError(Exception):
    """Base of every error the weights layer raises on purpose."""


class NetworkUnavailableError(WeightsError, ValueError):
    """A pretrained entry whose network (or backbone / encoder) birder_exp cannot build yet."""


class UnsupportedFormatError(WeightsError, ValueError):
    """A file format the entry does not publish, or that birder_exp does not read."""


class DownloadError(WeightsError, RuntimeError):
    """The bytes could not be fetched (HTTP error, timeout, dropped connection, full disk, offline)."""


class VerificationError(DownloadError):
    """Fetched or cached bytes whose sha256 / size differ from the entry; the file has been deleted."""


class CheckpointFormatError(WeightsError, ValueError):
    """A file that is not a readable Birder-layout checkpoint (or would need pickle code to load)."""


class CheckpointMismatchError(WeightsError, RuntimeError):
    """A checkpoint whose tensors do not fit the network being built (missing / unexpected keys, shapes)."""
