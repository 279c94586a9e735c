"""The durable callback inbox: webhook (verify, decrypt, store, ack), dispatcher, worker."""
