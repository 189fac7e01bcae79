"""The one exception type for mistakes a user can fix; stages print it as a single line."""


class UserError(Exception):
    """A bad param, missing file or broken dataset: the message names it and what to do."""
