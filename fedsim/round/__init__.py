"""One federated round as stages, each a small module with one job, in the order the strategy
(`fedsim.strategy.RankAdaptiveStrategy`) runs them:

    select      which clients train this round (availability, sampling)           select.py
    channel     their channel states for the round (the `Channel` block's draw)   (channels/)
    observe     what the rank policy sees                                          observe.py
    decide      the policy's ranks, checked                                        observe.py
    downlink    the train messages: the global adapter truncated to each rank      downlink.py
    train       the clients' local training (ClientApp; fedsim.training/cohort)    (client side)
    replies     the clients' answers, failures told apart from losses              replies.py
    uplink      what each client sent, metered by the channel, decoded             uplink.py
    aggregate   the global adapter from what arrived (AirComp, FedAvg & co.)      merge.py
    evaluate    the global adapter on the test split, the policy's view on validation (strategy)
    record      the ledger rows of the round and of each client                   record.py
    feedback    the policy's reward information                                   record.py

A stage takes plain values and returns a dataclass or arrays; only the strategy holds state
across rounds (the global adapter, counters, random streams).
"""
