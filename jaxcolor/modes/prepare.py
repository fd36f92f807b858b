"""`--mode=prepare`: photos -> ArrayRecord shards (`jaxcolor.records`)."""

from jaxcolor import records


def main(config, args) -> None:
  del args
  records.prepare(config)
