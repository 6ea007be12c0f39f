"""What the fork hooks write at every fork, in one small list: few pages for a fork to copy.

Every page a process writes after a fork is a copy-on-write fault, in the parent as in
the child (docs: "What a fork costs, in page faults"). The child's hook runs code that
never ran in that process before, so CPython takes its generic paths: a module global
written touches the module's dict, its key table and the name (three objects, apart in
memory); an attribute of an object with ``__slots__``, its type, the attribute's
descriptor and the name. An item of a list touches the list and its item array, nothing
else. So ``forksafe._fork``'s hooks keep the values they write at every fork here, and
``forksafe._thread_guard`` reads the fork generation from here, instead of bumping a
counter of its own in a second at-fork hook (a second Python call in every child: its
function, its code, its module's dict).
"""

from __future__ import annotations

__all__ = ["GENERATION", "IN_PYTHON_FORK", "SOCKETS_DETACHED_PID", "marks"]

# Indexes into ``marks``, module globals holding small ints (the child reads them
# without writing: CPython's small ints are shared and already written by everyone).
# Bumped by forksafe._fork's after_in_child hook in the child of every os.fork(): a
# thread guard of an older generation came from the parent (forksafe._thread_guard).
GENERATION = 0
# 1 from forksafe._fork's ``before`` hook until its ``after_in_child`` /
# ``after_in_parent`` hook: a child that uses a connection while it is still 1 is
# running an at-fork hook registered before forksafe's.
IN_PYTHON_FORK = 1
# The pid of the process whose fork hook detached the inherited sockets and left the
# rest of its reset for later; 0: none.
SOCKETS_DETACHED_PID = 2

# Imported by name (``from forksafe._forkmarks import marks``): a hook that reads a
# global of its own module touches no other module object.
marks: list[int] = [0, 0, 0]
