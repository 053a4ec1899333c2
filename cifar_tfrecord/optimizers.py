"""The optimizers of both phases.

Keras' `update_step` makes a few dozen operations a variable, each through
its op dispatch, the step's scalars and the weight decay's included, and
ResNet50 has about 220 trainable variables: building them was the longest
part of tracing the train step, and of Grappler's first pass over it. Here
what the variables share (learning rate, decay rate, Adam's beta powers) is
computed once a step, and each variable's AdamW or SGD update is
TensorFlow's fused kernel for Keras' formula (`ResourceApplyAdam`,
`ResourceApplyKerasMomentum`) after one for its decay: 8 operations a
variable in the traced step against Keras' 57 for AdamW
(tests/test_optimizers.py counts them), and the first training step comes
seconds sooner (docs/measurements.md). The slots, and so the checkpoints,
are Keras' own.

`_backend_update_step` and `_apply_weight_decay` are private methods of
Keras' TensorFlow optimizer; tests/test_optimizers.py checks each update
against Keras' own optimizer, so a Keras that changes them fails there.
"""

import keras
import tensorflow as tf


def make_optimizer(name: str, learning_rate, weight_decay: float) -> keras.optimizers.Optimizer:
    """The optimizer by name, with decoupled weight decay; 0 means none."""
    if name == 'sgd':
        return FusedSGD(learning_rate, momentum=0.9, nesterov=True,
                        weight_decay=weight_decay or None)
    if name == 'rmsprop':
        return OncePerStepRMSprop(learning_rate, weight_decay=weight_decay or None)
    return FusedAdamW(learning_rate, weight_decay=weight_decay)


class _OncePerStep:
    """Computes what every variable's update shares once a step.

    Keras hands `update_step` the learning rate; here it gets a dict of the
    step's scalars (`_step_scalars`), made once per replica, and applies the
    weight decay itself, each variable just before its update (Keras decays
    them all first: the same values, as one variable's decay and update never
    read another variable).
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        learning_rate = tf.cast(learning_rate, tf.float32)
        scalars = {'learning_rate': learning_rate, **self._step_scalars()}
        if self.weight_decay:
            scalars['decay'] = learning_rate * self.weight_decay
        super()._backend_update_step(grads, trainable_variables, scalars)

    def _step_scalars(self) -> dict:
        return {}

    def _apply_weight_decay(self, variables):
        """Done by `_decay`, variable by variable, in `update_step`."""

    def _decay(self, variable, scalars: dict) -> None:
        if self.weight_decay and self._use_weight_decay(variable):
            tf.raw_ops.ResourceApplyGradientDescent(
                var=variable.handle, alpha=tf.cast(scalars['decay'], variable.dtype),
                delta=variable.read_value())


class FusedAdamW(_OncePerStep, keras.optimizers.AdamW):
    """Keras' AdamW without AMSGrad, each variable's step one `ResourceApplyAdam`.

    The kernel takes 1 - beta in float32 where Keras takes it in float64:
    for the default beta_2 the second moment's rate differs in its fifth
    digit (0.00099999 against 0.001), no further.
    """

    def build(self, variables):
        if self.amsgrad:
            raise ValueError('FusedAdamW has no AMSGrad; use keras.optimizers.AdamW')
        super().build(variables)

    def _step_scalars(self) -> dict:
        step = tf.cast(self.iterations + 1, tf.float32)
        constants = {name: tf.constant(getattr(self, name), tf.float32)
                     for name in ('beta_1', 'beta_2', 'epsilon')}
        return {**constants, 'beta_1_power': tf.pow(constants['beta_1'], step),
                'beta_2_power': tf.pow(constants['beta_2'], step)}

    def update_step(self, gradient, variable, scalars):
        self._decay(variable, scalars)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.cast(scalars['beta_1_power'], dtype),
            beta2_power=tf.cast(scalars['beta_2_power'], dtype),
            lr=tf.cast(scalars['learning_rate'], dtype), beta1=tf.cast(scalars['beta_1'], dtype),
            beta2=tf.cast(scalars['beta_2'], dtype), epsilon=tf.cast(scalars['epsilon'], dtype),
            grad=tf.cast(gradient, dtype))


class FusedSGD(_OncePerStep, keras.optimizers.SGD):
    """Keras' SGD, each variable's momentum step one `ResourceApplyKerasMomentum`."""

    def update_step(self, gradient, variable, scalars):
        self._decay(variable, scalars)
        if not self.momentum:
            return super().update_step(gradient, variable, scalars['learning_rate'])
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=self.momentums[self._get_variable_index(variable)].handle,
            lr=tf.cast(scalars['learning_rate'], dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)


class OncePerStepRMSprop(_OncePerStep, keras.optimizers.RMSprop):
    """Keras' RMSprop, its learning rate and decay computed once a step.

    (TensorFlow's RMSProp kernel needs a momentum slot this one does not keep.)
    """

    def update_step(self, gradient, variable, scalars):
        self._decay(variable, scalars)
        super().update_step(gradient, variable, scalars['learning_rate'])
