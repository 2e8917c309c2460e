"""The one error type of exporting: its message is the one line a user sees."""


class ExportError(RuntimeError):
  """An export cannot be made as asked; nothing was written."""
