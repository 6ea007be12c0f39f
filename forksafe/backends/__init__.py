"""Django database backends with forksafe's connection pool: a change of ``ENGINE``, nothing else.

* ``forksafe.backends.mysql``: MySQL/MariaDB with mysqlclient or PyMySQL;
* ``forksafe.backends.postgresql``: PostgreSQL with psycopg2 (with psycopg 3,
  ``OPTIONS["pool"]`` keeps Django's own pool).

Each is Django's backend, subclassed; the pool is on when ``OPTIONS["pool"]`` is
``True`` or a dict of options (``forksafe._pool.PoolOptions``), as with Django's
native pool. See the pool guide (``docs/guides/pool.md``).
"""
