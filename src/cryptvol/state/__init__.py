"""Volume and snapshot records: their models, their store keys and their one serialisation.

Only this package knows where a record lives in the store and how it is encoded; the engine
reads and changes records through the repositories here, `keys` keeps key material apart.
"""
