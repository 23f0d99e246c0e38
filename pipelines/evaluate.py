"""``vqldm evaluate`` (placeholder until stage 3 lands)."""


def add_arguments(parser):
    pass


def main(args) -> int:
    from autoencoder.errors import UserError

    raise UserError("evaluate is not implemented yet")
