"""RabbitMQ adapter: connection, topology, confirmed publisher, consumers, on bridge's own AMQP
0-9-1 client (`bridge.amqp.wire`).

Importing it installs bridge's faster AMQP table codecs into pamqp (see `bridge.amqp.codec`),
which the client uses for the methods it does not write by hand.
"""

from bridge.amqp import codec

codec.install()
