"""One exception for bad user input; the CLI turns it into one line and exit code 2."""


class InputError(ValueError):
    """Malformed or out-of-range user input.

    The message always names the file (or flag) and the field, and says what was expected.
    """

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = str(source), field, problem
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {problem}")
