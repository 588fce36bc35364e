"""Every byte format wrenpack writes and reads again, one module each.

=================  ==========================================================
``event``          the invocation event (JSON on Lambda; in the driver's message locally)
``outcome``        a call's outcome: the pickled ("ok", value) or error 6-tuple
``status``         a call's status record (JSON)
``result``         the sealed result object: status + outcome (``WRP1``)
``segment``        the sealed segment record of a checkpointed call
``checkpoint``     the sealed checkpoint of a call's state (``WRCK2``)
``start``          the start mark of a call that waited in Lambda's queue
``owner``          the owner record of a job (MAC under the user's key)
``job_record``     a spawned job's record, progress record and cancel marker
``handoff``        the layout of a memfd passed between driver and local worker
``frames``         local frames on the driver/worker socketpair, with SCM_RIGHTS
``driver_message`` the driver's message header to a local worker (marshal)
``worker_reply``   a local worker's reply header (marshal)
=================  ==========================================================

Each module has a ``VERSION``; tests/test_wire_golden.py rebuilds each
format's bytes from fixed inputs and holds them to ``tests/golden/<format>-v<VERSION>.bin``,
so bytes that change need a new version (and a new golden file: see that
test for the command). A format that holds another (a result object holds a
status record) changes with it. Sealing (``wrenpack.auth``) is shared by the
sealed formats. Standard library and cloudpickle only: the worker imports this
package (``wrenpack deploy`` ships it), and it imports nothing of wrenpack
but ``errors``, ``keys`` and ``auth``.
"""
