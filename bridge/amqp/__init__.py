"""RabbitMQ adapter: connection, topology, confirmed publisher (aiormq underneath).

Importing it installs bridge's faster AMQP table and properties codecs into pamqp
(see `bridge.amqp.codec`).
"""

from bridge.amqp import codec

codec.install()
